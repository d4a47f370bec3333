import { pino } from 'pino';

export type Logger = pino.Logger;

/** Structured JSON logs. Secrets never reach here: callers log key ids, never secrets or tokens. */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'mqgate' },
    redact: { paths: ['access_key_secret', '*.access_key_secret', 'authorization', 'token'], censor: '***' },
  });
}
