import {
  type Metadata,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
  type ServiceDefinition,
  status as Status,
} from '@grpc/grpc-js';
import type { Context } from '@opentelemetry/api';
import protobuf from 'protobufjs';
import { InvalidArgumentError, MqError } from '../core/errors.js';
import { extractContext, tracingOn } from '../core/tracing.js';
import type { Audit } from './audit.js';
import { ANONYMOUS, type Authenticator, type Principal } from './auth.js';
import type { GatewayMetrics } from './metrics.js';
import { STATUS_NAME, type StatusMapper } from './status.js';

/**
 * Everything every call passes through, in one server interceptor, so that no handler (and no
 * RPC added later) can skip it: shutdown, authentication, the unary concurrency cap, metrics with
 * the final status of every call (streams included), and refusal of oversized or over-counted
 * requests BEFORE they are decoded.
 *
 * Order matters for cost. grpc-js reads a request's bytes only after the handler asks for them,
 * and the handler asks only once this interceptor passes the metadata on: a call without a valid
 * token is refused before one byte of its body is read. A request that is read is first checked
 * against its method's byte limit and its repeated-field counts by a scan of the raw bytes (no
 * objects built), so 500,000 properties cost a scan that stops at the 65th, not a decode of all.
 */

/** Who is calling and through which method; looked up by the handler from its call's metadata. */
export interface CallContext {
  readonly principal: Principal;
  /** False on an open method (HealthCheck) called without a valid token while auth is on. */
  readonly authenticated: boolean;
  /** The remote address, for audit lines about callers without a principal. */
  readonly peer: string;
  readonly method: string;
  /** The caller's trace context (traceparent / tracestate metadata), when tracing is on. */
  readonly trace: Context | undefined;
}

const contexts = new WeakMap<Metadata, CallContext>();

/** The context the interceptor attached to this call. */
export function callContext(call: { metadata: Metadata }): CallContext {
  const ctx = contexts.get(call.metadata);
  // Every call passes the interceptor before its handler runs; reaching here without a context
  // means the service was registered without it, which must fail loudly, not run unauthenticated.
  if (!ctx) throw new MqError('INTERNAL', 'call reached its handler without passing the call guard');
  return ctx;
}

/** A request refused while it was being decoded; the interceptor answers with its error. */
export class RefusedRequest {
  constructor(readonly error: MqError) {}
}

/** A repeated field counted in the raw request before it is decoded. */
export interface CountRule {
  readonly field: number;
  /** Most occurrences allowed (per enclosing message). */
  readonly limit: number;
  /** What the error calls it, e.g. "properties of one message". */
  readonly what: string;
  /** The setting that raises the limit, named in the error. */
  readonly setting: string;
  /** Rules applied inside each occurrence (a length-delimited sub-message). */
  readonly inner?: readonly CountRule[];
  /** Count inside this field without counting the field itself (a singular sub-message). */
  readonly descendOnly?: boolean;
}

export interface MethodLimits {
  /** Largest request in bytes; the largest legal request fits with room to spare. */
  readonly maxBytes: number;
  /** What raises maxBytes, named in the error. */
  readonly bytesSetting: string;
  readonly counts?: readonly CountRule[];
}

const LENGTH_DELIMITED = 2;

/**
 * Walks the fields of a serialized message and returns the first count rule broken, without
 * building any object. Malformed input returns undefined: the real decoder reports it.
 */
function countOver(buf: Uint8Array, rules: readonly CountRule[]): MqError | undefined {
  try {
    const reader = protobuf.Reader.create(buf);
    return scan(reader, buf.length, rules);
  } catch {
    return undefined;
  }
}

/**
 * `counts` are the occurrences of each rule's field in the message being scanned. A singular
 * sub-message field (descendOnly) may appear many times on the wire and the decoder merges the
 * occurrences into one message, so the counts inside it are shared by all its occurrences.
 */
function scan(
  reader: protobuf.Reader,
  end: number,
  rules: readonly CountRule[],
  counts: Map<CountRule, number> = new Map(),
): MqError | undefined {
  const merged = new Map<CountRule, Map<CountRule, number>>();
  while (reader.pos < end) {
    const tag = reader.uint32();
    const field = tag >>> 3;
    const wireType = tag & 7;
    const rule = rules.find((r) => r.field === field);
    if (rule === undefined) {
      reader.skipType(wireType);
      continue;
    }
    // The decoder reads a known field by its number whatever the wire type says, so a counted
    // field in another wire type would be decoded without being counted.
    if (wireType !== LENGTH_DELIMITED) {
      return new InvalidArgumentError(`the request is malformed: field ${field} has wire type ${wireType}`);
    }
    if (!rule.descendOnly) {
      const n = (counts.get(rule) ?? 0) + 1;
      if (n > rule.limit) {
        return new InvalidArgumentError(
          `the request has more than ${rule.limit} ${rule.what}; the limit is ${rule.limit} (${rule.setting})`,
        );
      }
      counts.set(rule, n);
    }
    const length = reader.uint32();
    const stop = reader.pos + length;
    if (stop > end)
      return new InvalidArgumentError('the request is malformed: a field runs past its message');
    if (rule.inner) {
      let inner = new Map<CountRule, number>();
      if (rule.descendOnly) {
        inner = merged.get(rule) ?? inner;
        merged.set(rule, inner);
      }
      const err = scan(reader, stop, rule.inner, inner);
      if (err) return err;
    }
    reader.pos = stop;
  }
  return undefined;
}

/**
 * The service definition with every method's decoder guarded by its limits. A method without
 * limits is a programming error caught at start-up, so a new RPC cannot ship unbounded.
 */
export function guardDecoders(
  service: ServiceDefinition,
  limits: Readonly<Record<string, MethodLimits>>,
): ServiceDefinition {
  const guarded: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(service)) {
    const lim = limits[name];
    if (!lim) throw new Error(`no request limits are defined for RPC ${name}`);
    const decode = method.requestDeserialize;
    guarded[name] = {
      ...method,
      requestDeserialize: (buf: Buffer): unknown => {
        if (buf.length > lim.maxBytes) {
          return new RefusedRequest(
            new InvalidArgumentError(
              `the ${name} request is ${buf.length} bytes; the limit is ${lim.maxBytes} (${lim.bytesSetting})`,
            ),
          );
        }
        const over = lim.counts ? countOver(buf, lim.counts) : undefined;
        if (over) return new RefusedRequest(over);
        try {
          return decode(buf);
        } catch (err) {
          return new RefusedRequest(
            new InvalidArgumentError(
              `the ${name} request is not a valid protobuf message: ${(err as Error).message}`,
            ),
          );
        }
      },
    };
  }
  return guarded as ServiceDefinition;
}

export interface CallGuardOptions {
  auth: Authenticator;
  audit: Audit;
  metrics: GatewayMetrics;
  toStatus: StatusMapper;
  maxConcurrent: number;
  isClosing(): boolean;
  /** Methods any caller may use without a token (HealthCheck). */
  openMethods: ReadonlySet<string>;
  /** Told of every call's peer, so a connection that never makes a call can be cut off. */
  onCall?(peer: string): void;
}

export interface CallGuard {
  readonly interceptor: ServerInterceptor;
  /** Unary calls being served now. */
  readonly activeUnary: () => number;
}

function peerAddress(peer: string): string {
  const i = peer.lastIndexOf(':');
  return i > 0 ? peer.slice(0, i) : peer;
}

export function createCallGuard(options: CallGuardOptions): CallGuard {
  const { auth, audit, metrics, toStatus } = options;
  let activeUnary = 0;

  const interceptor: ServerInterceptor = (descriptor, next: ServerInterceptingCallInterface) => {
    const method = descriptor.path.slice(descriptor.path.lastIndexOf('/') + 1);
    const unary = !descriptor.requestStream && !descriptor.responseStream;
    const open = options.openMethods.has(method);
    const t0 = performance.now();
    let counted = false;
    let finished = false;
    let refused = false;
    const finish = (code: number): void => {
      if (finished) return;
      finished = true;
      if (counted && unary) activeUnary--;
      metrics.rpc(method, STATUS_NAME[code] ?? String(code), unary ? (performance.now() - t0) / 1000 : -1);
    };
    // grpc-js answers some failures itself on the call below this one (a request over the
    // transport's size ceiling, a decompression error): record those statuses too, not the
    // cancel that follows them.
    const transportSend = next.sendStatus.bind(next);
    next.sendStatus = (status) => {
      finish(status.code);
      transportSend(status);
    };
    const call: ServerInterceptingCall = new ServerInterceptingCall(next, {
      start: (startNext) =>
        startNext({
          onReceiveMetadata: (metadata, passOn) => {
            const peer = next.getPeer();
            options.onCall?.(peer);
            const refuse = (err: MqError): void => {
              refused = true;
              call.sendStatus({ ...toStatus(err), metadata: null });
            };
            if (options.isClosing() && !open) {
              refuse(
                new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance'),
              );
              return;
            }
            let principal: Principal;
            let authenticated = true;
            try {
              principal = auth.authenticate(metadata.get('authorization')[0]?.toString());
            } catch (err) {
              if (!open) {
                audit.refuse('auth', `peer ${peerAddress(peer)}`, (err as MqError).message);
                refuse(err as MqError);
                return;
              }
              principal = ANONYMOUS;
              authenticated = false;
            }
            if (unary && !open) {
              if (activeUnary >= options.maxConcurrent) {
                audit.refuse('quota', principal.name || `peer ${peerAddress(peer)}`, 'MAX_CONCURRENT');
                refuse(
                  new MqError(
                    'RESOURCE_EXHAUSTED',
                    `the gateway is serving ${activeUnary} calls, its limit (MAX_CONCURRENT=${options.maxConcurrent}); retry with backoff`,
                  ),
                );
                return;
              }
              activeUnary++;
              counted = true;
            }
            const traceContext = tracingOn()
              ? extractContext((key) => metadata.get(key)[0]?.toString())
              : undefined;
            contexts.set(metadata, { principal, authenticated, peer, method, trace: traceContext });
            passOn(metadata);
          },
          onReceiveMessage: (message, passOn) => {
            if (message instanceof RefusedRequest) {
              refused = true;
              call.sendStatus({ ...toStatus(message.error), metadata: null });
              return;
            }
            passOn(message);
          },
          onReceiveHalfClose: (passOn) => {
            // After a refusal the handler never saw a request; passing the half-close on would
            // make grpc-js answer a second status ("no request message").
            if (!refused) passOn();
          },
          onCancel: () => finish(Status.CANCELLED),
        }),
      sendStatus: (status, passOn) => {
        finish(status.code);
        passOn(status);
      },
    });
    return call;
  };
  return { interceptor, activeUnary: () => activeUnary };
}

/** Framing and ids around a message body in a send request: ids, tag, keys, field tags. */
const ENVELOPE_BYTES = 64 * 1024;
/** Requests that carry no message: ids, names, keys, each bounded far below this. */
const SMALL_REQUEST_BYTES = 64 * 1024;

/**
 * Each RPC's request limits, derived from the configuration: the largest legal request fits, and
 * anything larger is refused before it is decoded.
 */
export function requestLimits(c: {
  maxMessageSize: number;
  maxBatchBytes: number;
  maxBatchSize: number;
  maxProperties: number;
  idLength: number;
}): Record<string, MethodLimits> {
  const small: MethodLimits = { maxBytes: SMALL_REQUEST_BYTES, bytesSetting: 'a fixed 64 KiB' };
  // MessageProperties is field 4 of every send request and of BatchEntry (5 of PublishEntry);
  // its map is field 1.
  const propertiesAt = (field: number): CountRule[] => [
    {
      field,
      limit: 1,
      what: 'properties',
      setting: 'MAX_PROPERTIES',
      descendOnly: true,
      inner: [
        { field: 1, limit: c.maxProperties, what: 'properties on one message', setting: 'MAX_PROPERTIES' },
      ],
    },
  ];
  const properties = propertiesAt(4);
  const single: MethodLimits = {
    maxBytes: c.maxMessageSize + ENVELOPE_BYTES,
    bytesSetting: 'MAX_MESSAGE_SIZE + 64 KiB',
    counts: properties,
  };
  return {
    CreateProducer: small,
    CreateConsumer: small,
    ReceiveMessages: small,
    AckMessage: small,
    NackMessage: small,
    CleanupProducer: small,
    CleanupConsumer: small,
    EndTransaction: small,
    HealthCheck: small,
    SendMessage: single,
    SendOrderedMessage: single,
    SendDelayMessage: single,
    SendTransactionMessage: single,
    SendMessages: {
      maxBytes: c.maxBatchBytes,
      bytesSetting: 'MAX_BATCH_BYTES',
      counts: [
        { field: 2, limit: c.maxBatchSize, what: 'messages', setting: 'MAX_BATCH_SIZE', inner: properties },
      ],
    },
    AckMessages: {
      maxBytes: c.maxBatchSize * (c.idLength + 3) + 1024,
      bytesSetting: 'MAX_BATCH_SIZE receipt handles',
      counts: [{ field: 2, limit: c.maxBatchSize, what: 'receipt handles', setting: 'MAX_BATCH_SIZE' }],
    },
    // Per frame: an open frame (small) plus at most MAX_BATCH_SIZE acks and nacks.
    Subscribe: {
      maxBytes: SMALL_REQUEST_BYTES + c.maxBatchSize * (c.idLength + 24),
      bytesSetting: 'MAX_BATCH_SIZE acks and nacks',
      counts: [
        { field: 3, limit: c.maxBatchSize, what: 'acks', setting: 'MAX_BATCH_SIZE' },
        { field: 4, limit: c.maxBatchSize, what: 'nacks', setting: 'MAX_BATCH_SIZE' },
      ],
    },
    Publish: {
      maxBytes: c.maxBatchBytes,
      bytesSetting: 'MAX_BATCH_BYTES',
      counts: [
        {
          field: 2,
          limit: c.maxBatchSize,
          what: 'messages',
          setting: 'MAX_BATCH_SIZE',
          inner: propertiesAt(5),
        },
      ],
    },
  };
}
