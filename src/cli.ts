#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { setLogger } from '@grpc/grpc-js';
import { Command, Option } from 'commander';
import { consumeCommand } from './cli/consume.js';
import { healthCommand } from './cli/health.js';
import { publishCommand } from './cli/publish.js';
import { isMqError } from './core/errors.js';
import { describeSettings, type GatewayConfig, loadConfig, SETTINGS } from './gateway/config.js';
import { createLogger } from './gateway/log.js';
import { brokerRedactor } from './gateway/redact.js';
import { Gateway } from './gateway/server.js';
import { startTracing, type Tracing } from './gateway/telemetry.js';

const program = new Command('mqgate')
  .description(
    'A message gateway: the RocketMQProxy gRPC service in front of an embedded broker, Kafka, RocketMQ 5 and NATS JetStream.',
  )
  .version(packageVersion(), '-V, --version', 'print the version');

const serve = program
  .command('serve')
  .description(
    'Run the gateway (defaults: gRPC 127.0.0.1:50051, metrics http://127.0.0.1:8080/metrics, embedded broker).',
  )
  .addHelpText(
    'after',
    `\nEvery flag has an environment variable (flags win):\n${describeSettings('text')}\n`,
  );
for (const s of SETTINGS) {
  const opt = s.kind === 'bool' ? new Option(s.flag, s.help) : new Option(`${s.flag} <value>`, s.help);
  serve.addOption(opt.hideHelp());
}
serve.action(async (opts: Record<string, string | boolean>) => {
  const flags: Partial<Record<keyof GatewayConfig, string>> = {};
  for (const s of SETTINGS) {
    const name = s.flag.replace(/^--/, '').replace(/-([a-z])/g, (_: string, c: string) => c.toUpperCase());
    const v = opts[name];
    if (v !== undefined) flags[s.key as keyof GatewayConfig] = String(v);
  }
  let config: GatewayConfig;
  try {
    config = loadConfig(process.env, flags);
  } catch (err) {
    console.error(`mqgate: ${(err as Error).message}`);
    process.exit(2);
  }
  const redactor = brokerRedactor(config.brokers.map((b) => b.url));
  const log = createLogger(config.logLevel, redactor);
  routeGrpcLogs(log);
  let tracing: Tracing | undefined;
  try {
    tracing = await startTracing(process.env, log);
  } catch (err) {
    console.error(`mqgate: tracing could not start (check the OTEL_* variables): ${(err as Error).message}`);
    process.exit(2);
  }
  const gateway = new Gateway({ config, logger: log });
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting at once');
      process.exit(130);
    }
    log.info({ signal, timeoutMs: config.shutdownTimeoutMs }, 'shutting down');
    const force = setTimeout(() => {
      log.error('shutdown deadline passed: exiting');
      process.exit(1);
    }, config.shutdownTimeoutMs + 1000);
    force.unref();
    gateway
      .close()
      // Spans still buffered go out before the exit (the exporter's own timeout bounds this).
      .then(() =>
        tracing?.shutdown().catch((err: unknown) => log.warn({ err }, 'trace export at shutdown failed')),
      )
      .then(
        () => process.exit(0),
        (err) => {
          log.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    await gateway.start();
  } catch (err) {
    // One line for the operator; the stack only when debugging.
    log.debug({ err }, 'start-up failed');
    console.error(`mqgate: ${redactor.scrub(isMqError(err) ? err.message : String(err))}`);
    process.exit(1);
  }
});

/** The version in package.json, which ships beside dist/ and src/. */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/**
 * grpc-js writes its own lines to stderr ("E 2026-... | server | ..."); they go through the
 * gateway's logger instead, at the level their first letter gives.
 */
function routeGrpcLogs(log: ReturnType<typeof createLogger>): void {
  setLogger({
    error: (...args: unknown[]) => {
      const text = args.map(String).join(' ');
      const level = text.startsWith('E ') ? 'error' : text.startsWith('W ') ? 'warn' : 'debug';
      log[level]({ source: 'grpc-js' }, text.replace(/^[EWID] \S+ \| /, ''));
    },
  });
}

program.addCommand(publishCommand());
program.addCommand(consumeCommand());
program.addCommand(healthCommand());

program.parseAsync(process.argv).catch((err: unknown) => {
  console.error(`mqgate: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
