import { readFileSync } from 'node:fs';
import { type Command, Option } from 'commander';
import { MQClient } from '../client/index.js';

/** Connection flags shared by publish, consume and health; each has an environment variable. */
export function addConnectionOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option('--grpc <host:port>', 'gateway gRPC address').env('MQGATE_GRPC').default('127.0.0.1:50051'),
    )
    .addOption(
      new Option('--endpoint <endpoint>', 'broker endpoint sent to the gateway (selects a broker)')
        .env('MQGATE_ENDPOINT')
        .default(''),
    )
    .addOption(new Option('--instance-id <id>', 'instance id').env('MQGATE_INSTANCE_ID').default(''))
    .addOption(new Option('--access-key-id <id>', 'access key id').env('MQGATE_ACCESS_KEY_ID').default(''))
    .addOption(
      new Option('--access-key-secret <secret>', 'access key secret')
        .env('MQGATE_ACCESS_KEY_SECRET')
        .default(''),
    )
    .addOption(
      new Option('--token <token>', 'bearer token for a gateway with AUTH_TOKENS').env('MQGATE_TOKEN'),
    )
    .addOption(new Option('--tls', 'connect with TLS (system roots unless --ca)'))
    .addOption(new Option('--ca <file>', 'PEM file of the CA that signed the gateway certificate'));
}

export interface ConnectionFlags {
  grpc: string;
  endpoint: string;
  instanceId: string;
  accessKeyId: string;
  accessKeySecret: string;
  token?: string;
  tls?: boolean;
  ca?: string;
}

export function clientFrom(flags: ConnectionFlags): MQClient {
  const tls = flags.ca ? { ca: readFileSync(flags.ca) } : flags.tls === true;
  return new MQClient({
    grpcEndpoint: flags.grpc,
    endpoint: flags.endpoint,
    instanceId: flags.instanceId,
    accessKeyId: flags.accessKeyId,
    accessKeySecret: flags.accessKeySecret,
    token: flags.token,
    tls,
  });
}

/**
 * Messages per second on stderr, redrawn once a second, only when stderr is a terminal (so pipes
 * and logs stay clean). One unref'd interval; stop() clears it and the line.
 */
export class Progress {
  #count = 0;
  #lastCount = 0;
  #last = Date.now();
  readonly #label: string;
  readonly #timer: NodeJS.Timeout | undefined;

  constructor(label: string) {
    this.#label = label;
    // Only when the output goes elsewhere: on a terminal shared with stdout, the redrawn line
    // would run into the printed messages.
    if (process.stderr.isTTY && !process.stdout.isTTY) {
      this.#timer = setInterval(() => this.#draw(), 1000);
      this.#timer.unref();
    }
  }

  tick(n = 1): void {
    this.#count += n;
  }

  get count(): number {
    return this.#count;
  }

  stop(): void {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    process.stderr.write('\r\x1b[K');
  }

  #draw(): void {
    const now = Date.now();
    const rate = ((this.#count - this.#lastCount) * 1000) / Math.max(1, now - this.#last);
    this.#last = now;
    this.#lastCount = this.#count;
    process.stderr.write(`\r\x1b[K${this.#count} messages ${this.#label}, ${rate.toFixed(0)}/s`);
  }
}

/** Refuses to go on without an option that is required (after commander's unknown-option check). */
export function requireFlag(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') {
    throw new Error(`required option '${flag}' not specified`);
  }
  return value;
}

/**
 * Calls `onStop` on the first SIGINT/SIGTERM; a second one exits at once. Returns a function that
 * removes the handlers.
 */
export function onStopSignal(onStop: () => void): () => void {
  let seen = 0;
  const handler = (): void => {
    seen++;
    if (seen > 1) process.exit(130);
    onStop();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

/** Writes to stdout, waiting when its buffer is full so a slow reader slows the consumer down. */
export async function writeOut(text: string): Promise<void> {
  if (!process.stdout.write(text)) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        process.stdout.off('drain', done);
        process.stdout.off('close', done);
        process.stdout.off('error', done);
        resolve();
      };
      process.stdout.on('drain', done);
      process.stdout.on('close', done);
      process.stdout.on('error', done);
    });
  }
}

export function parsePositiveInt(value: string, name: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new Error(`${name} must be a positive integer, got "${value}"`);
  }
  return Number(value);
}
