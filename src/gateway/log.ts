import { pino } from 'pino';
import type { Redactor } from './redact.js';

export type Logger = pino.Logger;

/**
 * Structured JSON logs. Callers log principals and key ids, never tokens or secrets; with a
 * redactor, every line is also scrubbed of the credentials in broker URLs on its way out, since
 * client libraries write connection URLs into their error messages.
 */
export function createLogger(level: string, redactor?: Redactor): Logger {
  const options = {
    level,
    base: { service: 'mqgate' },
    redact: { paths: ['access_key_secret', '*.access_key_secret', 'authorization', 'token'], censor: '***' },
  };
  if (!redactor || redactor.empty) return pino(options);
  const out = pino.destination({ dest: 1, sync: true });
  return pino(options, { write: (line: string) => out.write(redactor.scrub(line)) });
}
