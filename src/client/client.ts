import { setMaxListeners } from 'node:events';
import type { ChannelOptions } from '@grpc/grpc-js';
import { ClosedError, checkOptionNames, InvalidArgumentError } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { Consumer, type ConsumerOptions } from './consumer.js';
import { Producer } from './producer.js';
import { type BackoffOptions, type ResolvedBackoff, resolveBackoff } from './retry.js';
import { type CallControl, Rpc, type TlsOptions } from './rpc.js';
import type { WireHealthResponse } from './wire.js';

export interface MQClientOptions {
  /** The broker endpoint sent with CreateProducer/CreateConsumer (selects a broker on the gateway). */
  endpoint?: string;
  accessKeyId?: string;
  accessKeySecret?: string;
  /** Default instance id for getProducer/getConsumer calls that pass an empty one. */
  instanceId?: string;
  /** The gateway's gRPC address, host:port. Default 127.0.0.1:50051. */
  grpcEndpoint?: string;
  /** Bearer token for a gateway started with AUTH_TOKENS. */
  token?: string;
  /** TLS to the gateway: true for the system roots, or PEM material. */
  tls?: boolean | TlsOptions;
  /** Deadline of each unary call. Default 30 s. */
  callTimeoutMs?: number;
  /**
   * Retries of calls that failed with UNAVAILABLE or the gateway's MAX_CONCURRENT refusal.
   * Default 8 attempts, 100 ms doubling to 2 s, full jitter.
   */
  retry?: BackoffOptions;
  /** Extra grpc-js channel options. */
  channelOptions?: ChannelOptions;
}

const CLIENT_OPTIONS = [
  'endpoint',
  'accessKeyId',
  'accessKeySecret',
  'instanceId',
  'grpcEndpoint',
  'token',
  'tls',
  'callTimeoutMs',
  'retry',
  'channelOptions',
] as const;

export interface HealthStatus {
  healthy: boolean;
  message: string;
}

/**
 * A connection to an mqgate gateway (or any RocketMQProxy gRPC service): one gRPC channel shared
 * by every producer and consumer made from it. close() closes all of them and the channel.
 */
export class MQClient {
  readonly endpoint: string;
  readonly instanceId: string;
  readonly grpcEndpoint: string;
  readonly #accessKeyId: string;
  readonly #accessKeySecret: string;
  readonly #rpc: Rpc;
  readonly #retry: ResolvedBackoff;
  readonly #producers = new Set<Producer>();
  readonly #consumers = new Set<Consumer>();
  /** Aborts getProducer/getConsumer calls still creating when close() runs. */
  readonly #closing = new AbortController();
  #closePromise: Promise<void> | undefined;

  constructor(options: MQClientOptions = {}) {
    checkOptionNames(options, CLIENT_OPTIONS, 'MQClient');
    // Every call in flight listens on this signal; many concurrent sends are normal, not a leak.
    setMaxListeners(0, this.#closing.signal);
    this.endpoint = options.endpoint ?? '';
    this.instanceId = options.instanceId ?? '';
    this.grpcEndpoint = options.grpcEndpoint ?? '127.0.0.1:50051';
    this.#accessKeyId = options.accessKeyId ?? '';
    this.#accessKeySecret = options.accessKeySecret ?? '';
    const callTimeoutMs = options.callTimeoutMs ?? 30_000;
    if (!(callTimeoutMs > 0)) throw new InvalidArgumentError('callTimeoutMs must be more than 0');
    if (!/^(unix:\S+|\S+:\d+)$/.test(this.grpcEndpoint)) {
      throw new InvalidArgumentError(
        `grpcEndpoint "${this.grpcEndpoint}" is not host:port (e.g. 127.0.0.1:50051)`,
      );
    }
    this.#retry = resolveBackoff(options.retry, 8);
    this.#rpc = new Rpc({
      address: this.grpcEndpoint,
      tls: options.tls,
      token: options.token,
      callTimeoutMs,
      channelOptions: options.channelOptions,
    });
  }

  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  /** Creates a producer for `topic` (CreateProducer). */
  async getProducer(
    instanceId: string,
    topic: string,
    options: { signal?: AbortSignal } = {},
  ): Promise<Producer> {
    this.#assertOpen('getProducer');
    checkOptionNames(options, ['signal'], 'getProducer');
    const producer = await Producer.create(
      {
        rpc: this.#rpc,
        endpoint: this.endpoint,
        accessKeyId: this.#accessKeyId,
        accessKeySecret: this.#accessKeySecret,
        retry: this.#retry,
        onClose: (p) => this.#producers.delete(p),
      },
      { instanceId: instanceId || this.instanceId, topic },
      this.#control(options.signal),
    );
    return this.#adopt(producer, this.#producers);
  }

  /**
   * Creates a consumer of `topic` in `groupId` (CreateConsumer). Messages flow once onMessage() is
   * called or iteration starts.
   */
  async getConsumer(
    instanceId: string,
    topic: string,
    groupId: string,
    tagExpression = '*',
    options: ConsumerOptions & { signal?: AbortSignal } = {},
  ): Promise<Consumer> {
    this.#assertOpen('getConsumer');
    const consumer = await Consumer.create(
      {
        rpc: this.#rpc,
        endpoint: this.endpoint,
        accessKeyId: this.#accessKeyId,
        accessKeySecret: this.#accessKeySecret,
        retry: this.#retry,
        onClose: (c) => this.#consumers.delete(c),
      },
      { instanceId: instanceId || this.instanceId, topic, groupId, tagExpression: tagExpression || '*' },
      options,
      this.#control(options.signal).signal,
    );
    return this.#adopt(consumer, this.#consumers);
  }

  /** Asks the gateway whether it and its brokers are healthy. Throws when it cannot be reached. */
  async healthCheck(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<HealthStatus> {
    this.#assertOpen('healthCheck');
    const res = await this.#rpc.unary<WireHealthResponse>(
      'HealthCheck',
      {},
      {
        ...this.#control(options.signal),
        timeoutMs: options.timeoutMs,
      },
    );
    return { healthy: res.healthy === true, message: res.message ?? '' };
  }

  /** Closes every producer and consumer made from this client, then the channel. Idempotent. */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#closing.abort(new ClosedError('the MQClient is closed'));
    // Consumers close in parallel: each may wait for its running handlers.
    const closing = [...this.#consumers, ...this.#producers].map((x) => x.close());
    await closeAll([
      async () => {
        const failed = (await Promise.allSettled(closing)).filter((r) => r.status === 'rejected');
        if (failed.length > 0) throw failed[0]?.reason;
      },
      () => this.#rpc.close(),
    ]);
  }

  #control(signal: AbortSignal | undefined): CallControl {
    return { signal: signal ? AbortSignal.any([signal, this.#closing.signal]) : this.#closing.signal };
  }

  #assertOpen(what: string): void {
    if (this.closed) throw new ClosedError(`${what}: the MQClient is closed`);
  }

  /** A producer or consumer finished creating after close() began is closed instead of handed out. */
  async #adopt<T extends Producer | Consumer>(item: T, set: Set<T>): Promise<T> {
    if (this.closed) {
      await item.close();
      throw new ClosedError('the MQClient was closed while this was being created');
    }
    set.add(item);
    return item;
  }
}
