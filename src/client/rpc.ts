import {
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type Client,
  type ClientDuplexStream,
  type ClientReadableStream,
  type ClientUnaryCall,
  credentials,
  Metadata,
  makeClientConstructor,
  type ServiceClientConstructor,
  type ServiceError,
  status as Status,
} from '@grpc/grpc-js';
import { abortError, ClosedError, ERROR_CODES, type ErrorCode, MqError } from '../core/errors.js';
import { serviceDefinition } from '../proto.js';
import type { WireMessage } from './wire.js';

let serviceCtor: ServiceClientConstructor | undefined;

function proxyConstructor(): ServiceClientConstructor {
  serviceCtor ??= makeClientConstructor(serviceDefinition(), 'RocketMQProxy');
  return serviceCtor;
}

export type UnaryMethod =
  | 'CreateProducer'
  | 'SendMessage'
  | 'SendOrderedMessage'
  | 'SendDelayMessage'
  | 'SendTransactionMessage'
  | 'EndTransaction'
  | 'CreateConsumer'
  | 'AckMessage'
  | 'NackMessage'
  | 'CleanupProducer'
  | 'CleanupConsumer'
  | 'HealthCheck';

type UnaryFn = (
  request: object,
  metadata: Metadata,
  options: CallOptions,
  callback: (err: ServiceError | null, response?: unknown) => void,
) => ClientUnaryCall;

type StreamFn = (request: object, metadata: Metadata, options?: CallOptions) => ClientReadableStream<unknown>;

type DuplexFn = (metadata: Metadata, options?: CallOptions) => ClientDuplexStream<unknown, unknown>;

export interface TlsOptions {
  /** PEM root certificates; the system roots when omitted. */
  ca?: Buffer | string;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: Buffer | string;
  key?: Buffer | string;
}

export interface RpcOptions {
  address: string;
  tls?: boolean | TlsOptions | undefined;
  token?: string | undefined;
  /** Deadline for unary calls. */
  callTimeoutMs: number;
  channelOptions?: ChannelOptions | undefined;
}

export interface CallControl {
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
}

const toBuf = (v: Buffer | string | undefined): Buffer | null =>
  v === undefined ? null : typeof v === 'string' ? Buffer.from(v) : v;

/**
 * The gRPC status codes the gateway emits map onto error codes through the `CODE: ` prefix it puts
 * in details; this table covers statuses that come from the transport or an older gateway.
 */
const CODE_BY_STATUS: Partial<Record<Status, ErrorCode>> = {
  [Status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [Status.NOT_FOUND]: 'NOT_FOUND',
  [Status.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [Status.UNIMPLEMENTED]: 'UNSUPPORTED',
  [Status.RESOURCE_EXHAUSTED]: 'RESOURCE_EXHAUSTED',
  [Status.UNAVAILABLE]: 'UNAVAILABLE',
  [Status.DEADLINE_EXCEEDED]: 'TIMEOUT',
  [Status.ABORTED]: 'ABORTED',
  [Status.CANCELLED]: 'ABORTED',
  [Status.UNAUTHENTICATED]: 'UNAUTHENTICATED',
  [Status.PERMISSION_DENIED]: 'PERMISSION_DENIED',
  [Status.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
};

const KNOWN_CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** An error from the gateway, with the gRPC status it arrived as (for retry decisions). */
export class GatewayError extends MqError {
  readonly grpcStatus: number;

  constructor(code: ErrorCode, message: string, grpcStatus: number, retryable: boolean, cause?: unknown) {
    super(code, message, { cause, retryable });
    this.name = 'GatewayError';
    this.grpcStatus = grpcStatus;
  }
}

/**
 * Turns a gRPC status into an MqError. Only UNAVAILABLE and the gateway's MAX_CONCURRENT refusal
 * are marked retryable: per-caller limits and transport size limits are RESOURCE_EXHAUSTED too,
 * and retrying those only repeats the failure.
 */
export function fromStatus(
  what: string,
  code: number,
  details: string,
  address: string,
  cause?: unknown,
): GatewayError {
  const m = /^([A-Z_]+): ([\s\S]*)$/.exec(details);
  let errCode: ErrorCode;
  let text: string;
  if (m && KNOWN_CODES.has(m[1] as string)) {
    errCode = m[1] as ErrorCode;
    text = m[2] as string;
  } else {
    errCode = CODE_BY_STATUS[code as Status] ?? 'INTERNAL';
    text = details || Status[code] || `status ${code}`;
    if (code === Status.UNAVAILABLE) {
      // grpc-js appends an often empty "Resolution note: " to connection failures.
      const why = text
        .replace(/\.?\s*Resolution note:.*$/s, '')
        .replace(/^No connection established\. Last error: /, '');
      text = `cannot reach the mqgate gateway at ${address} (${why}); is it running?`;
    }
  }
  const retryable =
    code === Status.UNAVAILABLE || (code === Status.RESOURCE_EXHAUSTED && /MAX_CONCURRENT/.test(text));
  return new GatewayError(errCode, `${what}: ${text}`, code, retryable, cause);
}

interface ResponseLike {
  success?: boolean;
  message?: string;
}

/**
 * One grpc-js channel and the calls made on it. Every unary call has a deadline and honours an
 * AbortSignal by cancelling the call.
 */
export class Rpc {
  readonly address: string;
  readonly #client: Client;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  #closed = false;

  constructor(options: RpcOptions) {
    this.address = options.address;
    this.#token = options.token;
    this.#timeoutMs = options.callTimeoutMs;
    const Ctor = proxyConstructor();
    this.#client = new Ctor(options.address, channelCredentials(options.tls), {
      // A private subchannel pool: close() then really closes the socket instead of leaving it in
      // grpc-js's process-wide pool.
      'grpc.use_local_subchannel_pool': 1,
      // What the gateway sends is bounded by the gateway (a Subscribe frame is at most about 1 MiB
      // or one message); a limit here would only turn a large message into a failed stream.
      'grpc.max_receive_message_length': -1,
      // grpc-js backs off up to 2 minutes between reconnects by default; a restarted gateway should
      // be found within seconds.
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 3000,
      ...options.channelOptions,
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The deadline of each unary call. */
  get callTimeoutMs(): number {
    return this.#timeoutMs;
  }

  metadata(): Metadata {
    const md = new Metadata();
    if (this.#token) md.set('authorization', `Bearer ${this.#token}`);
    return md;
  }

  unary<Res extends object>(method: UnaryMethod, request: object, control: CallControl = {}): Promise<Res> {
    if (this.#closed) return Promise.reject(new ClosedError(`${method}: the MQClient is closed`));
    const { signal } = control;
    if (signal?.aborted) return Promise.reject(abortError(signal, method));
    const fn = (this.#client as unknown as Record<string, UnaryFn>)[method] as UnaryFn;
    return new Promise<Res>((resolve, reject) => {
      const deadline = Date.now() + (control.timeoutMs ?? this.#timeoutMs);
      let onAbort: (() => void) | undefined;
      const call = fn.call(this.#client, request, this.metadata(), { deadline }, (err, response) => {
        if (onAbort) signal?.removeEventListener('abort', onAbort);
        if (err) {
          if (signal?.aborted && err.code === Status.CANCELLED) reject(abortError(signal, method));
          else
            reject(fromStatus(`${method} failed`, err.code, err.details ?? err.message, this.address, err));
          return;
        }
        const res = (response ?? {}) as Res & ResponseLike;
        // An older gateway reports failures in the body instead of the status.
        if (res.success === false) {
          reject(fromStatus(`${method} failed`, Status.UNKNOWN, res.message ?? '', this.address));
          return;
        }
        resolve(res);
      });
      if (signal) {
        onAbort = () => call.cancel();
        signal.addEventListener('abort', onAbort, { once: true });
      }
    });
  }

  receive(consumerId: string): ClientReadableStream<WireMessage> {
    if (this.#closed) throw new ClosedError('ReceiveMessages: the MQClient is closed');
    const fn = (this.#client as unknown as Record<string, StreamFn>).ReceiveMessages as StreamFn;
    return fn.call(
      this.#client,
      { consumer_id: consumerId },
      this.metadata(),
    ) as ClientReadableStream<WireMessage>;
  }

  /** Opens a bidirectional stream (Subscribe or Publish). */
  duplex<Req, Res>(method: 'Subscribe' | 'Publish'): ClientDuplexStream<Req, Res> {
    if (this.#closed) throw new ClosedError(`${method}: the MQClient is closed`);
    const fn = (this.#client as unknown as Record<string, DuplexFn>)[method] as DuplexFn;
    return fn.call(this.#client, this.metadata()) as ClientDuplexStream<Req, Res>;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }
}

function channelCredentials(tls: boolean | TlsOptions | undefined): ChannelCredentials {
  if (!tls) return credentials.createInsecure();
  if (tls === true) return credentials.createSsl();
  return credentials.createSsl(toBuf(tls.ca), toBuf(tls.key), toBuf(tls.cert));
}
