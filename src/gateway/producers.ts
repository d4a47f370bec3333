import { randomUUID } from 'node:crypto';
import type { Producer } from '../brokers/broker.js';
import { MqError, NotFoundError, quoteInput } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import type { Audit } from './audit.js';
import type { Caller } from './callers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import { OwnedMap } from './owned.js';
import { Quota } from './quota.js';
import type { BrokerRef } from './routing.js';

/**
 * Producer handles and the broker producers they share.
 *
 * A handle is what CreateProducer returns. Handles with the same (endpoint, caller, instance,
 * topic) share one broker producer, counted by the set of live handles (not by a number that
 * copies of a handle could each decrement). The broker producer closes when its last handle goes, or after
 * PRODUCER_CLEANUP_TIMEOUT without sends, and reopens on the next send: a live handle never sees
 * NOT_FOUND. Only a handle unused for PRODUCER_HANDLE_TTL is dropped, as a leak detection.
 */

interface Shared {
  readonly key: string;
  readonly ref: BrokerRef;
  readonly topic: string;
  readonly caller: Caller;
  readonly credentials: { accessKeyId: string; accessKeySecret: string } | undefined;
  readonly handles: Set<string>;
  producer: Promise<Producer> | undefined;
  opened: boolean;
  lastSend: number;
  sending: number;
  creating: number;
}

export interface ProducerHandle {
  readonly id: string;
  readonly owner: string;
  readonly caller: Caller;
  readonly endpoint: string;
  readonly topic: string;
  readonly shared: Shared;
  lastUsed: number;
}

export interface ProducerRegistryOptions {
  cleanupTimeoutMs: number;
  handleTtlMs: number;
  maxPerCaller: number;
  /** Live handles across all callers (MAX_PRODUCER_HANDLES). */
  maxHandles: number;
  metrics: GatewayMetrics;
  audit: Audit;
  log: Logger;
}

const notFound = (id: string): NotFoundError =>
  new NotFoundError(
    `producer ${quoteInput(id)} not found: it was released or expired after PRODUCER_HANDLE_TTL without use; call CreateProducer again`,
  );

export class ProducerRegistry {
  readonly #handles: OwnedMap<ProducerHandle>;
  readonly #shared = new Map<string, Shared>();
  readonly #quota: Quota;
  readonly #opts: ProducerRegistryOptions;
  #closed = false;

  constructor(options: ProducerRegistryOptions) {
    this.#opts = options;
    this.#handles = new OwnedMap('producer', notFound, options.audit);
    this.#quota = new Quota(
      'producer handles',
      { limit: options.maxPerCaller, setting: 'MAX_PRODUCERS_PER_CALLER' },
      { limit: options.maxHandles, setting: 'MAX_PRODUCER_HANDLES' },
      options.audit,
    );
  }

  get handleCount(): number {
    return this.#handles.size;
  }

  get brokerProducerCount(): number {
    let n = 0;
    for (const s of this.#shared.values()) if (s.producer) n++;
    return n;
  }

  /** Read-only, for the status page: live handles per owner (principal name, '' when auth is off). */
  handlesByOwner(): Map<string, number> {
    const out = new Map<string, number>();
    for (const h of this.#handles.values()) out.set(h.owner, (out.get(h.owner) ?? 0) + 1);
    return out;
  }

  async create(input: {
    ref: BrokerRef;
    endpoint: string;
    caller: Caller;
    instanceId: string;
    topic: string;
    accessKeySecret: string;
  }): Promise<ProducerHandle> {
    this.#assertOpen();
    const { caller } = input;
    // Counted before awaiting, so concurrent creates cannot overshoot the limit.
    this.#quota.acquire(caller.quotaKey, caller.label, 'release some with CleanupProducer');
    const key = [input.ref.index, input.endpoint, caller.identity, input.instanceId, input.topic].join(
      '\u0000',
    );
    let shared = this.#shared.get(key);
    if (!shared) {
      shared = {
        key,
        ref: input.ref,
        topic: input.topic,
        caller,
        credentials: caller.accessKeyId
          ? { accessKeyId: caller.accessKeyId, accessKeySecret: input.accessKeySecret }
          : undefined,
        handles: new Set(),
        producer: undefined,
        opened: false,
        lastSend: Date.now(),
        sending: 0,
        creating: 0,
      };
      this.#shared.set(key, shared);
    }
    shared.creating++;
    try {
      // Opening eagerly surfaces a missing topic or a refused credential at CreateProducer.
      await (shared.producer ?? this.#open(shared));
    } catch (err) {
      shared.creating--;
      this.#quota.release(caller.quotaKey);
      if (shared.handles.size === 0 && shared.creating === 0) this.#shared.delete(key);
      throw err;
    }
    shared.creating--;
    const handle: ProducerHandle = {
      id: randomUUID(),
      owner: caller.owner,
      caller,
      endpoint: input.endpoint,
      topic: input.topic,
      shared,
      lastUsed: Date.now(),
    };
    shared.handles.add(handle.id);
    this.#handles.add(handle);
    return handle;
  }

  /** The handle `id` names, if `owner` created it; NOT_FOUND otherwise. */
  get(id: string, owner: string): ProducerHandle {
    return this.#handles.get(id, owner);
  }

  /** Runs `fn` with the handle's broker producer, reopening it if it was closed while idle. */
  async use<T>(handle: ProducerHandle, fn: (p: Producer) => Promise<T>): Promise<T> {
    // A handle released (or expired) while a stream still holds it must not reopen a broker
    // producer that no registry tracks.
    if (this.#handles.find(handle.id, handle.owner) !== handle) throw notFound(handle.id);
    const s = handle.shared;
    const now = Date.now();
    handle.lastUsed = now;
    s.lastSend = now;
    s.sending++;
    try {
      if (!s.producer) this.#opts.metrics.counts.producersReopened++;
      const producer = await (s.producer ?? this.#open(s));
      return await fn(producer);
    } finally {
      s.sending--;
    }
  }

  /** Releases the owner's handle; false for an unknown id or another principal's. */
  async release(id: string, owner: string): Promise<boolean> {
    const h = this.#handles.find(id, owner);
    if (!h) return false;
    await this.#drop(h);
    return true;
  }

  /** Releases the caller's own handles for a topic (and endpoint when given); never another caller's. */
  async releaseByTopic(caller: Caller, topic: string, endpoint: string): Promise<number> {
    const mine = [...this.#handles.values()].filter(
      (h) =>
        h.caller.identity === caller.identity &&
        h.topic === topic &&
        (endpoint === '' || h.endpoint === endpoint),
    );
    await closeAll(mine.map((h) => () => this.#drop(h)));
    return mine.length;
  }

  /** Periodic reaping: idle broker producers close, abandoned handles are dropped and counted. */
  async sweep(now = Date.now()): Promise<void> {
    const steps: Array<() => Promise<void>> = [];
    for (const h of this.#handles.values()) {
      if (now - h.lastUsed > this.#opts.handleTtlMs) {
        this.#opts.metrics.counts.producerLeakDetections++;
        this.#opts.log.warn(
          { producerId: h.id, topic: h.topic, accessKeyId: h.caller.accessKeyId },
          'producer handle unused for PRODUCER_HANDLE_TTL: dropped (leak detection)',
        );
        steps.push(() => this.#drop(h));
      }
    }
    for (const s of this.#shared.values()) {
      if (
        s.producer &&
        s.sending === 0 &&
        s.creating === 0 &&
        now - s.lastSend > this.#opts.cleanupTimeoutMs
      ) {
        const p = s.producer;
        s.producer = undefined;
        steps.push(async () => (await p).close());
      }
    }
    await closeAll(steps);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#shared.values()];
    this.#handles.clear();
    this.#shared.clear();
    this.#quota.clear();
    await closeAll(
      all.map((s) => async () => {
        const p = s.producer;
        s.producer = undefined;
        if (p) await (await p.catch(() => undefined))?.close();
      }),
    );
  }

  #open(s: Shared): Promise<Producer> {
    const p = s.ref.broker.producer(s.topic, { credentials: s.credentials });
    s.producer = p;
    p.then(
      () => {
        s.opened = true;
      },
      () => {
        // A failed open must not poison later sends: the next use tries again.
        if (s.producer === p) s.producer = undefined;
      },
    );
    return p;
  }

  async #drop(h: ProducerHandle): Promise<void> {
    if (!this.#handles.delete(h)) return;
    this.#quota.release(h.caller.quotaKey);
    const s = h.shared;
    s.handles.delete(h.id);
    if (s.handles.size === 0 && s.creating === 0 && this.#shared.get(s.key) === s) {
      this.#shared.delete(s.key);
      const p = s.producer;
      s.producer = undefined;
      if (p) await (await p.catch(() => undefined))?.close();
    }
  }

  #assertOpen(): void {
    if (this.#closed)
      throw new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance');
  }
}
