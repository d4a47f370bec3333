/**
 * Raw clients of the two streaming RPCs, Subscribe and Publish, on the grpc-js client loaded the
 * way existing clients load the proto (see gateway.ts): what arrives is kept as it arrives, so
 * tests can assert on frames, order and the final status.
 */
import assert from 'node:assert/strict';
import { type ClientDuplexStream, Metadata, type StatusObject } from '@grpc/grpc-js';
import type { WireSubscribeOpen } from '../../src/gateway/wire.js';
import type { RawClient, Received } from './gateway.js';
import { eventually } from './leaks.js';

export interface HandleFailure {
  receipt_handle: string;
  code: string;
  message: string;
}

export interface PublishResult {
  sequence: string;
  success: boolean;
  code: string;
  message: string;
  message_id: string;
  transaction_id: string;
}

export type SubscribeOpen = WireSubscribeOpen;

export interface SubscribeFrame {
  open?: SubscribeOpen;
  credit?: number;
  acks?: string[];
  nacks?: Array<{ receipt_handle: string; delay_ms: string }>;
}

interface SubscribeResponse {
  consumer_id: string;
  messages: Received[];
  failures: HandleFailure[];
}

/** What a call ended with; `undefined` until it did. */
export type Ended = Pick<StatusObject, 'code' | 'details'>;

/** Resolves with the status of a call, or fails the test after `ms`. */
async function settled(get: () => Ended | undefined, what: string, ms: number): Promise<Ended> {
  await eventually(() => get() !== undefined, what, ms);
  return get() as Ended;
}

export class SubscribeStream {
  readonly call: ClientDuplexStream<SubscribeFrame, SubscribeResponse>;
  /** Every delivery, in arrival order. */
  readonly messages: Received[] = [];
  /** Messages per server frame, in arrival order. */
  readonly batches: number[] = [];
  readonly failures: HandleFailure[] = [];
  /** Server frames that carried failures. */
  failureFrames = 0;
  consumerId = '';
  status: Ended | undefined;

  constructor(
    client: RawClient,
    md: Metadata = new Metadata(),
    onMessages?: (batch: Received[], stream: SubscribeStream) => void,
  ) {
    this.call = (
      client.Subscribe as (md: Metadata) => ClientDuplexStream<SubscribeFrame, SubscribeResponse>
    ).call(client, md);
    this.call.on('data', (frame: SubscribeResponse) => {
      if (frame.consumer_id) this.consumerId = frame.consumer_id;
      if (frame.failures.length > 0) {
        this.failureFrames++;
        this.failures.push(...frame.failures);
      }
      if (frame.messages.length > 0) {
        // Subscribe sends every body as bytes (message_body empty); the tests read the text.
        for (const m of frame.messages) {
          if (m.message_body === '' && m.message_body_bytes.length > 0) {
            m.message_body = Buffer.from(m.message_body_bytes).toString('utf8');
          }
        }
        this.batches.push(frame.messages.length);
        this.messages.push(...frame.messages);
        onMessages?.(frame.messages, this);
      }
    });
    this.call.on('error', () => {});
    this.call.once('status', (s: StatusObject) => {
      this.status = { code: s.code, details: s.details };
    });
  }

  get ended(): boolean {
    return this.status !== undefined;
  }

  write(frame: SubscribeFrame): void {
    if (!this.ended) this.call.write(frame);
  }

  /** Writes the open frame and waits for the session id the server answers with. */
  async open(open: SubscribeOpen, credit = 0, timeoutMs = 10_000): Promise<string> {
    this.write({ open, credit });
    await eventually(() => this.consumerId !== '' || this.ended, 'the Subscribe session id', timeoutMs);
    assert.ok(this.consumerId, `Subscribe ended before its session id: ${this.status?.details}`);
    return this.consumerId;
  }

  ack(handles: string[], credit = 0): void {
    this.write({ acks: handles, credit });
  }

  /** The status the stream ended with (fails the test when it does not end within `ms`). */
  ending(ms = 10_000): Promise<Ended> {
    return settled(() => this.status, 'the Subscribe stream to end', ms);
  }

  cancel(): void {
    this.call.cancel();
  }

  /** Half-closes: the client grants and acks nothing more. */
  end(): void {
    this.call.end();
  }
}

export function subscribe(
  client: RawClient,
  md?: Metadata,
  onMessages?: (batch: Received[], stream: SubscribeStream) => void,
): SubscribeStream {
  return new SubscribeStream(client, md, onMessages);
}

/**
 * A consumer on Subscribe that acks what it receives at once, granting the same credit again in
 * the same frame: the stream always has `credit` messages of room.
 */
export function ackingSubscriber(client: RawClient, md?: Metadata): SubscribeStream {
  return subscribe(client, md, (batch, s) =>
    s.ack(
      batch.map((m) => m.receipt_handle),
      batch.length,
    ),
  );
}

export interface PublishEntry {
  sequence: string;
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: { properties?: Record<string, string>; message_key?: string; sharding_key?: string };
  sharding_key?: string;
  start_deliver_time?: string;
  delay_time_level?: string;
  transactional?: boolean;
  trans_check_immunity_time?: number;
}

export interface PublishFrame {
  producer_id?: string;
  messages?: PublishEntry[];
}

export class PublishStream {
  readonly call: ClientDuplexStream<PublishFrame, { results: PublishResult[] }>;
  /** Every result, in arrival order. */
  readonly results: PublishResult[] = [];
  readonly bySequence = new Map<string, PublishResult>();
  status: Ended | undefined;
  readonly #waiters = new Map<string, Array<(r: PublishResult | undefined) => void>>();

  constructor(client: RawClient, md: Metadata = new Metadata()) {
    this.call = (
      client.Publish as (md: Metadata) => ClientDuplexStream<PublishFrame, { results: PublishResult[] }>
    ).call(client, md);
    this.call.on('data', (frame: { results: PublishResult[] }) => {
      for (const r of frame.results) {
        this.results.push(r);
        this.bySequence.set(r.sequence, r);
        const ws = this.#waiters.get(r.sequence);
        if (ws) {
          this.#waiters.delete(r.sequence);
          for (const w of ws) w(r);
        }
      }
    });
    this.call.on('error', () => {});
    this.call.once('status', (s: StatusObject) => {
      this.status = { code: s.code, details: s.details };
      for (const ws of this.#waiters.values()) for (const w of ws) w(undefined);
      this.#waiters.clear();
    });
  }

  get ended(): boolean {
    return this.status !== undefined;
  }

  write(frame: PublishFrame): boolean {
    if (this.ended) return false;
    return this.call.write(frame);
  }

  /** Resolves with the result of `sequence`, or undefined when the stream ends without one. */
  result(sequence: string): Promise<PublishResult | undefined> {
    const r = this.bySequence.get(sequence);
    if (r) return Promise.resolve(r);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const ws = this.#waiters.get(sequence) ?? [];
      ws.push(resolve);
      this.#waiters.set(sequence, ws);
    });
  }

  /** Waits until every sequence in `sequences` has its result (fails the test after `ms`). */
  async resultsFor(sequences: readonly string[], ms = 30_000): Promise<PublishResult[]> {
    await eventually(
      () => this.ended || sequences.every((s) => this.bySequence.has(s)),
      `${sequences.length} Publish results`,
      ms,
    );
    const missing = sequences.filter((s) => !this.bySequence.has(s));
    assert.deepEqual(
      missing.slice(0, 5),
      [],
      `${missing.length} results missing; the stream ended: ${this.status?.details}`,
    );
    return sequences.map((s) => this.bySequence.get(s) as PublishResult);
  }

  ending(ms = 10_000): Promise<Ended> {
    return settled(() => this.status, 'the Publish stream to end', ms);
  }

  cancel(): void {
    this.call.cancel();
  }

  end(): void {
    this.call.end();
  }
}

export function publish(client: RawClient, md?: Metadata): PublishStream {
  return new PublishStream(client, md);
}

/**
 * Publishes `entries` through one Publish stream, `perFrame` per frame, waits for every result
 * and half-closes the stream (which must then end OK). Returns the results in entry order.
 */
export async function publishAll(
  client: RawClient,
  producerId: string,
  entries: readonly PublishEntry[],
  options: { perFrame?: number; md?: Metadata; timeoutMs?: number } = {},
): Promise<{ results: PublishResult[]; arrival: PublishResult[] }> {
  const stream = publish(client, options.md);
  const perFrame = options.perFrame ?? 100;
  for (let i = 0; i < entries.length; i += perFrame) {
    const messages = entries.slice(i, i + perFrame);
    stream.write(i === 0 ? { producer_id: producerId, messages } : { messages });
  }
  const results = await stream.resultsFor(
    entries.map((e) => e.sequence),
    options.timeoutMs,
  );
  stream.end();
  const st = await stream.ending();
  assert.equal(st.code, 0, `the Publish stream ended ${st.code}: ${st.details}`);
  return { results, arrival: stream.results };
}
