import { type ClientDuplexStream, status as Status } from '@grpc/grpc-js';
import { abortError, ClosedError, type ErrorCode, MqError } from '../core/errors.js';
import { fromStatus, GatewayError, type Rpc } from './rpc.js';
import type { WireProperties } from './wire.js';

/** One message as a Publish frame carries it (the client's side of PublishEntry). */
export interface PublishEntryInput {
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: WireProperties;
  sharding_key?: string;
  start_deliver_time?: string;
  delay_time_level?: string;
  transactional?: boolean;
  trans_check_immunity_time?: number;
}

interface WireResult {
  sequence: string;
  success: boolean;
  code: string;
  message: string;
  message_id: string;
  transaction_id: string;
}

export interface PublishOutcome {
  message_id: string;
  transaction_id: string;
}

interface Pending {
  readonly resolve: (r: PublishOutcome) => void;
  readonly reject: (e: MqError) => void;
  readonly at: number;
  /** The stream the send was written to; undefined while it waits in the queue. */
  call?: object | undefined;
}

/** The gateway has no Publish RPC (an older mqgate, or another RocketMQProxy server). */
export class PublishUnsupportedError extends MqError {
  constructor() {
    super('UNSUPPORTED', 'the gateway has no Publish stream', { retryable: false });
    this.name = 'PublishUnsupportedError';
  }
}

/** Entries per frame, and bytes per frame: well under the gateway's MAX_BATCH_SIZE / MAX_BATCH_BYTES defaults. */
const FRAME_ENTRIES = 512;
const FRAME_BYTES = 4 * 1024 * 1024;

/** Gateway error codes as the gRPC statuses a unary call would have carried them. */
const STATUS_OF: Partial<Record<string, number>> = {
  INVALID_ARGUMENT: Status.INVALID_ARGUMENT,
  NOT_FOUND: Status.NOT_FOUND,
  TOPIC_NOT_FOUND: Status.NOT_FOUND,
  UNSUPPORTED: Status.UNIMPLEMENTED,
  RESOURCE_EXHAUSTED: Status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: Status.UNAVAILABLE,
  CLOSED: Status.UNAVAILABLE,
  PERMISSION_DENIED: Status.PERMISSION_DENIED,
  FAILED_PRECONDITION: Status.FAILED_PRECONDITION,
};

/**
 * A producer's Publish stream: publishes made in one turn of the event loop go out in one frame,
 * each resolves with its own result. The stream opens on the first send and again after it ends;
 * when it fails, every send still waiting fails with the stream's status, so the producer's retry
 * rules apply to it as to a unary send.
 */
export class PublishChannel {
  readonly #rpc: Rpc;
  readonly #timeoutMs: number;
  #call: ClientDuplexStream<object, { results: WireResult[] }> | undefined;
  #producerId = '';
  #seq = 0;
  #pending = new Map<string, Pending>();
  #queue: Array<{ entry: object; bytes: number }> = [];
  #flushScheduled = false;
  #writable = true;
  #watchdog: NodeJS.Timeout | undefined;
  #unsupported = false;
  #closed = false;
  /** The next frame is the stream's first: it names the producer. */
  #first = true;

  constructor(rpc: Rpc, timeoutMs: number) {
    this.#rpc = rpc;
    this.#timeoutMs = timeoutMs;
  }

  /** False once the gateway answered UNIMPLEMENTED: the producer uses unary calls from then on. */
  get supported(): boolean {
    return !this.#unsupported;
  }

  send(producerId: string, input: PublishEntryInput, signal?: AbortSignal): Promise<PublishOutcome> {
    if (this.#closed) return Promise.reject(new ClosedError('the producer is closed'));
    if (this.#unsupported) return Promise.reject(new PublishUnsupportedError());
    if (this.#call && producerId !== this.#producerId) {
      // The handle was re-created: what is queued still goes out on the old stream, then it ends.
      this.#flush();
      this.#call.end();
      this.#call = undefined;
    }
    if (!this.#call) this.#open(producerId);
    const sequence = String(++this.#seq);
    // The input is the caller's fresh object: it becomes the entry itself.
    const entry = input as PublishEntryInput & { sequence: string };
    entry.sequence = sequence;
    const bytes = (input.message_body_bytes?.length ?? 0) + (input.message_body?.length ?? 0);
    if (signal?.aborted) return Promise.reject(abortError(signal, 'publish'));
    return new Promise<PublishOutcome>((resolve, reject) => {
      const at = Date.now();
      if (!signal) this.#pending.set(sequence, { resolve, reject, at });
      else {
        const onAbort = (): void => {
          if (this.#pending.delete(sequence)) reject(abortError(signal, 'publish'));
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const done = (): void => signal.removeEventListener('abort', onAbort);
        this.#pending.set(sequence, {
          resolve: (r) => {
            done();
            resolve(r);
          },
          reject: (e) => {
            done();
            reject(e);
          },
          at,
        });
      }
      this.#queue.push({ entry, bytes });
      this.#schedule();
    });
  }

  /** Every send without a result fails with CLOSED; the stream is ended. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#failAll(new ClosedError('the producer was closed before this message had a result'));
    this.#call?.end();
    this.#call = undefined;
  }

  #open(producerId: string): void {
    this.#producerId = producerId;
    const call = this.#rpc.duplex<object, { results: WireResult[] }>('Publish');
    this.#call = call;
    this.#writable = true;
    this.#first = true;
    call.on('data', (frame: { results?: WireResult[] }) => {
      for (const r of frame.results ?? []) this.#settle(r);
    });
    call.on('drain', () => {
      this.#writable = true;
      this.#schedule();
    });
    call.on('error', () => {});
    call.once('status', (st: { code: number; details: string }) => {
      const current = this.#call === call;
      if (current) this.#call = undefined;
      let err: MqError;
      if (st.code === Status.OK) {
        err = new MqError('UNAVAILABLE', 'the Publish stream ended before these sends had results', {
          retryable: true,
        });
      } else if (st.code === Status.UNIMPLEMENTED) {
        this.#unsupported = true;
        err = new PublishUnsupportedError();
      } else err = fromStatus('Publish', st.code, st.details, this.#rpc.address);
      // Only this stream's sends fail (and, if it was the current one, those still queued for
      // it): an older stream ending after the producer moved to a new handle touches nothing else.
      this.#failStream(call, current || this.#unsupported, err);
    });
  }

  #schedule(): void {
    if (this.#flushScheduled || !this.#writable) return;
    this.#flushScheduled = true;
    // Everything published in this turn of the event loop goes in one frame; no timer.
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#flushScheduled = false;
    const call = this.#call;
    if (!call) return;
    while (this.#queue.length > 0 && this.#writable) {
      let n = 0;
      let bytes = 0;
      while (n < this.#queue.length && n < FRAME_ENTRIES) {
        const b = (this.#queue[n] as { bytes: number }).bytes;
        if (n > 0 && bytes + b > FRAME_BYTES) break;
        bytes += b;
        n++;
      }
      // A send aborted while queued is not sent at all.
      const messages = this.#queue
        .splice(0, n)
        .filter((q) => this.#pending.has((q.entry as { sequence: string }).sequence))
        .map((q) => q.entry);
      if (messages.length === 0) continue;
      for (const m of messages) {
        const p = this.#pending.get((m as { sequence: string }).sequence);
        if (p) p.call = call;
      }
      const frame = this.#first ? { producer_id: this.#producerId, messages } : { messages };
      this.#first = false;
      this.#writable = call.write(frame);
    }
    this.#startWatchdog();
  }

  #settle(r: WireResult): void {
    const p = this.#pending.get(r.sequence);
    if (!p) return;
    this.#pending.delete(r.sequence);
    if (r.success) {
      p.resolve({ message_id: r.message_id, transaction_id: r.transaction_id });
      return;
    }
    const code = (r.code || 'INTERNAL') as ErrorCode;
    const status = STATUS_OF[code] ?? Status.UNKNOWN;
    p.reject(
      new GatewayError(
        code,
        `Publish failed: ${r.message.replace(/^[A-Z_]+: /, '')}`,
        status,
        code === 'UNAVAILABLE',
      ),
    );
    if (this.#pending.size === 0) this.#stopWatchdog();
  }

  #failStream(call: object, andQueued: boolean, err: MqError): void {
    if (andQueued) this.#queue = [];
    for (const [seq, p] of this.#pending) {
      if (p.call === call || (andQueued && p.call === undefined)) {
        this.#pending.delete(seq);
        p.reject(err);
      }
    }
    if (this.#pending.size === 0) this.#stopWatchdog();
  }

  #failAll(err: MqError): void {
    this.#queue = [];
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) p.reject(err);
    this.#stopWatchdog();
  }

  /** A send waiting longer than the call timeout cancels the stream (a gateway that hangs). */
  #startWatchdog(): void {
    if (this.#watchdog || this.#pending.size === 0) return;
    const every = Math.max(100, Math.min(1000, this.#timeoutMs / 4));
    this.#watchdog = setInterval(() => {
      const oldest = this.#pending.values().next().value;
      if (!oldest) {
        this.#stopWatchdog();
        return;
      }
      if (Date.now() - oldest.at > this.#timeoutMs) {
        const call = this.#call;
        this.#call = undefined;
        this.#failAll(new MqError('TIMEOUT', `Publish: no result within ${this.#timeoutMs} ms`));
        call?.cancel();
      }
    }, every);
    this.#watchdog.unref();
  }

  #stopWatchdog(): void {
    if (this.#watchdog) clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }
}
