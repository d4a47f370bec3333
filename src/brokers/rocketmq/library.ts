/**
 * Everything that touches rocketmq-client-nodejs internals lives here: the logger bridge, the
 * error mapping, and the guards that keep the library's timers, streams and rejections from
 * outliving shutdown(). The defects these guards work around are listed in DEFECTS below; each
 * one was read in node_modules/rocketmq-client-nodejs/src (1.0.8).
 */
import { EventEmitter } from 'node:events';
import { format } from 'node:util';
import {
  ChannelCredentials,
  type ClientDuplexStream,
  type ClientReadableStream,
  status as GrpcStatus,
  type Metadata,
  type ServiceError,
} from '@grpc/grpc-js';
import {
  ClientException,
  type Endpoints,
  type FilterExpression,
  MessageView,
  Producer,
  type ProducerOptions,
  type RpcClientManager,
  SimpleConsumer,
  type SimpleConsumerOptions,
  StatusChecker,
  SubscriptionLoadBalancer,
} from 'rocketmq-client-nodejs';
import definitionPb from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb.js';
import { MessagingServiceClient } from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/service_grpc_pb.js';
import type servicePb from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/service_pb.js';
import {
  ClosedError,
  MqError,
  NotFoundError,
  TimeoutError,
  TopicNotFoundError,
  UnavailableError,
} from '../../core/errors.js';
import type { BrokerLog } from '../broker.js';

export const Code = definitionPb.Code;
export const MessageType = definitionPb.MessageType;
export const TransactionResolution = definitionPb.TransactionResolution;

/**
 * Library defects found while writing this adapter, with the workaround applied. Kept as data so
 * the list is reviewed together with the code that depends on it.
 */
export const DEFECTS = [
  "src/client/TelemetrySession.ts #onError/#onEnd: on stream error/end it schedules setTimeout(renew, 1000) that is neither tracked nor cleared by shutdown(), so a ref'd timer outlives shutdown and, after RpcClientManager.close(), the renew opens a new gRPC channel (or throws inside the timer). Workaround: createTelemetryStream is overridden; after shutdown it returns an inert stream, and close() waits out a renew scheduled less than 1 s earlier.",
  'src/client/TelemetrySession.ts release(): calls stream.end() (half-close only, the call stays open until the server ends it) and then removeAllListeners(), so a later "error" (proxy restart, CANCELLED) is an unhandled error event that crashes the process. Workaround: every telemetry stream keeps a no-op error listener re-added after removeAllListeners, and close() cancels every stream it saw.',
  'src/client/BaseClient.ts shutdown(): awaits #notifyClientTermination() before releasing telemetry sessions and closing RpcClientManager; when the proxy is down that RPC rejects and the rest of shutdown is skipped (channels and streams leak). Workaround: notifyClientTermination is wrapped to never reject.',
  'src/client/RpcClientManager.ts #getRpcClient: after close() any RPC (an in-flight heartbeat, a route refresh, a late ack) silently creates a new RpcClient/channel that nobody closes; clients are also keyed by Endpoints object identity, so every 30 s route refresh adds a channel until the 30 min idle reaper. Workaround: every RpcClientManager method rejects with CLOSED once close() ran.',
  "src/client/RpcClientManager.ts constructor: starts a ref'd 60 s setInterval at construction; a client whose startup() failed keeps it (and the process) alive unless shutdown() is called. Workaround: the adapter always calls shutdown(), also after a failed or timed-out startup.",
  'src/client/BaseClient.ts #startup(): with topics it waits for the first settings command with no timeout, forever if the telemetry stream fails; a failed route fetch retries with 1 s/2 s sleeps nobody can cancel. Workaround: the adapter checks the topic route itself first (fast TOPIC_NOT_FOUND) and bounds startup() with a timeout.',
  'src/producer/Producer.ts onRecoverOrphanedTransactionCommand(): reads command.getMessage()!.getSystemProperties()! outside its try block and is called without await by TelemetrySession, so a malformed check command is an unhandled rejection. Workaround: overridden with a catch.',
  "src/consumer/SimpleConsumer.ts receive(): the long-polling call cannot be cancelled (RpcClient.receiveMessage keeps the call private) so shutdown waits up to awaitDuration and messages popped meanwhile stay invisible. Workaround: the adapter issues ReceiveMessage on its own cancellable call with the library's request builder and metadata.",
  'src/producer/PublishingLoadBalancer.ts and src/consumer/SubscriptionLoadBalancer.ts constructors filter queues with mq.queueId === MASTER_BROKER_ID (meant: broker id), so only queue 0 of each broker is used. Not worked around (ordering still holds; throughput per topic is one queue).',
  'src/producer/Producer.ts #send0 (line ~306): every failure is retried, also permanent 4xx answers such as 40014 (message type does not match the topic), so a mismatch costs three round trips and three error logs. Worked around only for the common case: the adapter checks the topic type from the route before sending.',
  '@grpc/grpc-js 1.14 resolving-call.js getConfig(): the child call is created in a promise callback that does not check whether the call ended meanwhile, so a call cancelled in the microtasks right after it was made ends for its caller while its child starts anyway: a ReceiveMessage nobody reads long-polls on, pops messages (invisible until their invisible time ends) and keeps the connection referenced. Workaround: receiveBatch cancels one macrotask after the abort, when the child exists.',
  'No library timer is unref()ed (BaseClient intervals 30 s/5 min/10 s, RpcClientManager 60 s); they are cleared by shutdown(), which the adapter always calls.',
] as const;

/** The library logs printf-style; this forwards to the broker's diagnostics sink, quietly. */
export function libraryLogger(log: BrokerLog | undefined, context: object) {
  const out = (level: 'debug' | 'warn', args: unknown[]): void => {
    if (!log) return;
    const [first, ...rest] = args;
    const text = typeof first === 'string' ? format(first, ...rest) : format(first, ...rest);
    log[level]({ ...context, lib: 'rocketmq-client-nodejs' }, text);
  };
  return {
    // The library logs every start-up step at info; that is debug noise for a gateway.
    info: (...args: unknown[]) => out('debug', args),
    debug: (...args: unknown[]) => out('debug', args),
    warn: (...args: unknown[]) => out('warn', args),
    error: (...args: unknown[]) => out('warn', args),
    close: () => {},
  };
}

export interface ErrorContext {
  topic?: string | undefined;
  group?: string | undefined;
  fifoGroup?: boolean | undefined;
  cluster: string;
  action: string;
}

export function topicHint(topic: string, cluster: string, type = 'NORMAL|FIFO|DELAY|TRANSACTION'): string {
  return `create it with: mqadmin updateTopic -n <namesrv> -t ${topic} -c ${cluster} -a +message.type=${type}`;
}

export function groupHint(group: string, fifo: boolean | undefined): string {
  return `create it with: mqadmin updateSubGroup -n <namesrv> -c <cluster> -g ${group}${
    fifo === undefined ? ' [-o true for a FIFO group]' : fifo ? ' -o true' : ''
  }`;
}

function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'details' in err;
}

/** Maps whatever the library or gRPC threw to an MqError that says what to do. */
export function toRocketMqError(err: unknown, ctx: ErrorContext): MqError {
  if (err instanceof MqError) return err;
  const where = `${ctx.action}${ctx.topic ? ` on topic "${ctx.topic}"` : ''}${ctx.group ? ` for group "${ctx.group}"` : ''}`;
  if (err instanceof ClientException) {
    const detail = err.message;
    switch (err.code) {
      case Code.TOPIC_NOT_FOUND:
        return new TopicNotFoundError(
          `topic "${ctx.topic ?? '?'}" does not exist on RocketMQ cluster ${ctx.cluster}; ${topicHint(ctx.topic ?? '<topic>', ctx.cluster)}`,
          { cause: err },
        );
      case Code.CONSUMER_GROUP_NOT_FOUND:
        return new NotFoundError(
          `consumer group "${ctx.group ?? '?'}" does not exist on RocketMQ cluster ${ctx.cluster}; ${groupHint(ctx.group ?? '<group>', ctx.fifoGroup)}`,
          { cause: err },
        );
      case Code.NOT_FOUND:
        return new NotFoundError(`${where}: RocketMQ says not found: ${detail}`, { cause: err });
      case Code.MESSAGE_PROPERTY_CONFLICT_WITH_TYPE:
        return new MqError(
          'FAILED_PRECONDITION',
          `${where}: the message does not match the topic's message type (${detail}); send FIFO messages with a key to FIFO topics, deliverAt to DELAY topics, prepare() to TRANSACTION topics, plain sends to NORMAL topics`,
          { cause: err },
        );
      case Code.INVALID_RECEIPT_HANDLE:
        return new NotFoundError(
          `${where}: the delivery is no longer held (receipt handle expired or already settled); the message will be redelivered`,
          { cause: err },
        );
      case Code.UNAUTHORIZED:
        return new MqError('UNAUTHENTICATED', `${where}: RocketMQ rejected the credentials: ${detail}`, {
          cause: err,
        });
      case Code.FORBIDDEN:
        return new MqError('PERMISSION_DENIED', `${where}: RocketMQ denied access: ${detail}`, {
          cause: err,
        });
      case Code.TOO_MANY_REQUESTS:
        return new MqError('RESOURCE_EXHAUSTED', `${where}: RocketMQ is throttling: ${detail}; retry later`, {
          cause: err,
        });
      case Code.PAYLOAD_TOO_LARGE:
      case Code.MESSAGE_BODY_TOO_LARGE:
      case Code.MESSAGE_PROPERTIES_TOO_LARGE:
      case Code.REQUEST_HEADER_FIELDS_TOO_LARGE:
        return new MqError('INVALID_ARGUMENT', `${where}: message too large: ${detail}`, { cause: err });
      case Code.UNSUPPORTED:
      case Code.VERSION_UNSUPPORTED:
        return new MqError('UNSUPPORTED', `${where}: RocketMQ does not support this: ${detail}`, {
          cause: err,
        });
      default:
        if (err.code >= 40000 && err.code < 50000) {
          return new MqError('INVALID_ARGUMENT', `${where}: RocketMQ refused the request: ${detail}`, {
            cause: err,
          });
        }
        return new UnavailableError(`${where}: RocketMQ failed: ${detail}`, { cause: err });
    }
  }
  if (isServiceError(err)) {
    if (err.code === GrpcStatus.DEADLINE_EXCEEDED) {
      return new TimeoutError(`${where}: the RocketMQ proxy did not answer in time`, { cause: err });
    }
    return new UnavailableError(
      `${where}: the RocketMQ proxy is unreachable or failed (${err.details || err.message})`,
      {
        cause: err,
      },
    );
  }
  if (err instanceof TypeError && /message type not match/i.test(err.message)) {
    return new MqError(
      'FAILED_PRECONDITION',
      `${where}: the message type does not match the topic's type (${err.message}); send FIFO messages with a key to FIFO topics, deliverAt to DELAY topics, prepare() to TRANSACTION topics`,
      { cause: err },
    );
  }
  if (err instanceof Error && err.cause !== undefined && /startup|fetch topic route/i.test(err.message)) {
    return toRocketMqError(err.cause, ctx);
  }
  const text = err instanceof Error ? err.message : String(err);
  return new MqError('INTERNAL', `${where}: ${text}`, { cause: err });
}

type TelemetryStream = ClientDuplexStream<servicePb.TelemetryCommand, servicePb.TelemetryCommand>;

/** What a released or post-shutdown telemetry session gets instead of a gRPC call. */
function inertStream(): TelemetryStream {
  const stream = new EventEmitter();
  Object.assign(stream, { write: () => true, end: () => {}, cancel: () => {} });
  return stream as unknown as TelemetryStream;
}

const RENEW_DELAY_MS = 1_000;

/**
 * One per library client. Wraps its RpcClientManager and telemetry streams so nothing the library
 * does after shutdown opens a channel, keeps a timer, or throws into the event loop.
 */
export class LibraryGuard {
  #closed = false;
  #streams = new Set<TelemetryStream>();
  #renewPendingUntil = 0;
  readonly #log: BrokerLog | undefined;

  constructor(log: BrokerLog | undefined) {
    this.#log = log;
  }

  get closed(): boolean {
    return this.#closed;
  }

  install(manager: RpcClientManager): void {
    const target = manager as unknown as Record<string, unknown>;
    const proto = Object.getPrototypeOf(manager) as Record<string, unknown>;
    for (const name of Object.getOwnPropertyNames(proto)) {
      const original = proto[name];
      if (name === 'constructor' || typeof original !== 'function') continue;
      const fn = original as (...args: unknown[]) => unknown;
      if (name === 'close') {
        target[name] = () => {
          this.#closed = true;
          return fn.call(manager);
        };
      } else if (name === 'telemetry') {
        target[name] = (...args: unknown[]) => (this.#closed ? inertStream() : fn.apply(manager, args));
      } else if (name === 'notifyClientTermination') {
        // Best effort: a failure here must not abort the library's shutdown half-way.
        target[name] = async (...args: unknown[]) => {
          if (this.#closed) return undefined;
          try {
            return await fn.apply(manager, args);
          } catch (err) {
            this.#log?.debug({ err: String(err) }, 'rocketmq: notifyClientTermination failed (ignored)');
            return undefined;
          }
        };
      } else {
        target[name] = (...args: unknown[]) =>
          this.#closed
            ? Promise.reject(new ClosedError('the RocketMQ client is shut down'))
            : fn.apply(manager, args);
      }
    }
  }

  /** Wraps BaseClient.createTelemetryStream. */
  telemetry(create: () => TelemetryStream): TelemetryStream {
    if (this.#closed) return inertStream();
    const stream = create();
    let released = false;
    const absorb = (err: unknown): void => {
      this.#log?.debug({ err: String(err) }, 'rocketmq: telemetry stream error after release (ignored)');
    };
    const onDone = (): void => {
      // The library's own once('error'|'end') handler is still attached, so it schedules a renew.
      if (!released) this.#renewPendingUntil = Date.now() + RENEW_DELAY_MS + 200;
    };
    stream.prependListener('error', onDone);
    stream.prependListener('end', onDone);
    stream.on('error', absorb);
    stream.on('status', () => this.#streams.delete(stream));
    const removeAll = stream.removeAllListeners.bind(stream);
    stream.removeAllListeners = ((...args: [(string | symbol)?]) => {
      released = true;
      // Spread, not removeAll(event): an explicit undefined removes only the "undefined" event.
      removeAll(...args);
      if (args.length === 0 || args[0] === 'error') stream.on('error', absorb);
      return stream;
    }) as typeof stream.removeAllListeners;
    this.#streams.add(stream);
    return stream;
  }

  /** Runs after the library's shutdown(): ends what it half-closed and outwaits its renew timer. */
  async afterShutdown(): Promise<void> {
    this.#closed = true;
    for (const stream of this.#streams) {
      try {
        stream.cancel();
      } catch {
        // already finished
      }
    }
    this.#streams.clear();
    const wait = this.#renewPendingUntil - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}

export class GuardedProducer extends Producer {
  readonly guard: LibraryGuard;

  constructor(options: ProducerOptions, guard: LibraryGuard) {
    super(options);
    this.guard = guard;
    guard.install(this.rpcClientManager);
  }

  override createTelemetryStream(endpoints: Endpoints): TelemetryStream {
    return this.guard.telemetry(() => super.createTelemetryStream(endpoints));
  }

  override async onRecoverOrphanedTransactionCommand(
    endpoints: Endpoints,
    command: servicePb.RecoverOrphanedTransactionCommand,
  ): Promise<void> {
    try {
      await super.onRecoverOrphanedTransactionCommand(endpoints, command);
    } catch (err) {
      this.logger.error('transaction check failed: %s', err);
    }
  }
}

export interface ReceivedBatch {
  readonly messages: MessageView[];
}

/**
 * A SimpleConsumer whose receive runs on a call the adapter can cancel: close() must not wait for
 * a long poll, and the library's receive() offers no way to stop one.
 */
export class GuardedSimpleConsumer extends SimpleConsumer {
  readonly guard: LibraryGuard;
  #channel: MessagingServiceClient | undefined;
  #balancer: SubscriptionLoadBalancer | undefined;
  #balancerRoute: unknown;

  constructor(options: SimpleConsumerOptions, guard: LibraryGuard) {
    super(options);
    this.guard = guard;
    guard.install(this.rpcClientManager);
  }

  override createTelemetryStream(endpoints: Endpoints): TelemetryStream {
    return this.guard.telemetry(() => super.createTelemetryStream(endpoints));
  }

  async receiveBatch(
    topic: string,
    filter: FilterExpression,
    batchSize: number,
    invisibleMs: number,
    longPollMs: number,
    signal: AbortSignal,
  ): Promise<MessageView[]> {
    if (this.guard.closed) throw new ClosedError('the RocketMQ consumer is shut down');
    const route = await this.getRouteData(topic);
    if (this.#balancerRoute !== route || !this.#balancer) {
      this.#balancer = this.#balancer ? this.#balancer.update(route) : new SubscriptionLoadBalancer(route);
      this.#balancerRoute = route;
    }
    const mq = this.#balancer.takeMessageQueue();
    const request = this.wrapReceiveMessageRequest(batchSize, mq, filter, invisibleMs, longPollMs);
    const metadata: Metadata = this.getRequestMetadata();
    if (signal.aborted) return [];
    this.#channel ??= new MessagingServiceClient(
      mq.broker.endpoints.getGrpcTarget(),
      ChannelCredentials.createInsecure(),
    );
    const call: ClientReadableStream<servicePb.ReceiveMessageResponse> = this.#channel.receiveMessage(
      request,
      metadata,
      { deadline: Date.now() + this.requestTimeout + longPollMs },
    );
    // Not cancel() at once: see the grpc-js defect in DEFECTS (a cancel right after the call was
    // made leaves its real call running). One turn later the child exists and is cancelled too.
    const onAbort = (): void => {
      setImmediate(() => call.cancel());
    };
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      const messages: servicePb.ReceiveMessageResponse[] = await new Promise((resolve, reject) => {
        const out: servicePb.ReceiveMessageResponse[] = [];
        call.on('data', (res: servicePb.ReceiveMessageResponse) => out.push(res));
        call.on('error', (err: ServiceError) => {
          if (err.code === GrpcStatus.CANCELLED && signal.aborted) resolve(out);
          else reject(err);
        });
        call.on('end', () => resolve(out));
      });
      let status: definitionPb.Status.AsObject | undefined;
      let transportTimestamp: Date | undefined;
      const views: MessageView[] = [];
      for (const res of messages) {
        if (res.hasStatus()) status = res.getStatus()?.toObject();
        else if (res.hasDeliveryTimestamp()) transportTimestamp = res.getDeliveryTimestamp()?.toDate();
      }
      for (const res of messages) {
        const message = res.getMessage();
        if (res.hasMessage() && message) views.push(new MessageView(message, mq, transportTimestamp));
      }
      // A cancelled call has no status; MESSAGE_NOT_FOUND (an empty long poll) passes the check.
      if (status) StatusChecker.check(status);
      return views;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  closeChannel(): void {
    this.#channel?.close();
    this.#channel = undefined;
  }
}
