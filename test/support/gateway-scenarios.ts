/**
 * Gateway-level scenarios every durable broker runs (Kafka, RocketMQ, NATS): the gateway in its
 * own process, a raw client speaking the wire contract, and the broker disturbed underneath.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { type ChildGateway, startChildGateway } from './child-gateway.js';
import { call, type RawClient, type Received, rawClient } from './gateway.js';
import { eventually } from './leaks.js';
import {
  type Ended,
  type PublishEntry,
  type PublishStream,
  publish,
  type SubscribeStream,
  subscribe,
} from './streams.js';

const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };

interface ScenarioOptions {
  brokerUrl: string;
  topic: string;
  group: string;
  /** Extra gateway environment (ACK_TIMEOUT etc.). */
  env?: Record<string, string>;
  /** Scales every wait; brokers that need seconds to rebalance get more. */
  timeoutScale?: number;
}

/** What the scenarios need of a consumer, whichever RPCs it uses. */
interface ScenarioConsumer {
  readonly received: Received[];
  readonly reconnects: number;
  start(): Promise<void>;
  /** Ends the current stream as a client disconnect would; the consumer reattaches by itself. */
  disconnect(): void;
  stop(): Promise<void>;
}

/** A consumer that survives stream ends: reattaches, or re-creates its session when it is gone. */
class ResilientConsumer implements ScenarioConsumer {
  readonly received: Received[] = [];
  consumerId = '';
  #stream: (NodeJS.EventEmitter & { cancel(): void }) | undefined;
  #stopped = false;
  #reattaching: Promise<void> | undefined;
  reconnects = 0;

  constructor(
    private readonly client: () => RawClient,
    private readonly topic: string,
    private readonly group: string,
    private readonly autoAck: boolean,
  ) {}

  async start(): Promise<void> {
    this.consumerId = (
      await call<{ consumer_id: string }>(this.client(), 'CreateConsumer', {
        ...keys,
        topic: this.topic,
        group_id: this.group,
      })
    ).consumer_id;
    this.#attach();
  }

  #attach(): void {
    const client = this.client();
    const stream = (client.ReceiveMessages as (req: object) => NodeJS.EventEmitter & { cancel(): void }).call(
      client,
      {
        consumer_id: this.consumerId,
      },
    );
    this.#stream = stream;
    stream.on('data', (m: Received) => {
      this.received.push(m);
      if (this.autoAck) {
        call(client, 'AckMessage', { consumer_id: this.consumerId, receipt_handle: m.receipt_handle }).catch(
          () => {
            // A failed ack only means a redelivery: that is what at-least-once allows.
          },
        );
      }
    });
    const onEnd = (): void => {
      if (this.#stream !== stream || this.#stopped) return;
      this.#stream = undefined;
      this.#reattaching ??= this.#reattach()
        .catch(() => {})
        .finally(() => {
          this.#reattaching = undefined;
        });
    };
    stream.on('error', onEnd);
    stream.on('end', onEnd);
  }

  async #reattach(): Promise<void> {
    this.reconnects++;
    for (let attempt = 0; !this.#stopped; attempt++) {
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      try {
        // Probe with an ack of a bogus handle: NOT_FOUND naming the consumer means the session is gone.
        await call(this.client(), 'AckMessage', { consumer_id: this.consumerId, receipt_handle: 'probe' });
      } catch (err) {
        const e = err as { code: number; details: string };
        if (e.code === 14) continue;
        if (e.code === 5 && /consumer ".*" not found/.test(e.details)) {
          try {
            await this.start();
            return;
          } catch {
            continue;
          }
        }
      }
      if (this.#stopped) return;
      try {
        this.#attach();
        return;
      } catch {
        // The channel went away under us; try again after the backoff.
      }
    }
  }

  /** Ends the current stream as a client disconnect would; the consumer reattaches by itself. */
  disconnect(): void {
    this.#stream?.cancel();
  }

  /** Stops reattaching without telling the gateway (as a client that goes away would). */
  abandon(): void {
    this.#stopped = true;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stream?.cancel();
    await this.#reattaching;
    await call(this.client(), 'CleanupConsumer', { consumer_id: this.consumerId }).catch(() => {});
  }
}

/**
 * ResilientConsumer on the streaming RPC: one Subscribe stream at a time on a CreateConsumer
 * session, acking each delivery in-stream as it arrives and granting the same credit again in
 * that frame. When the stream ends it reopens it on the same session, or on a new session when
 * the gateway no longer knows the old one.
 */
class StreamingConsumer implements ScenarioConsumer {
  readonly received: Received[] = [];
  consumerId = '';
  reconnects = 0;
  #stream: SubscribeStream | undefined;
  #stopped = false;
  #reattaching: Promise<void> | undefined;

  constructor(
    private readonly client: () => RawClient,
    private readonly topic: string,
    private readonly group: string,
    private readonly credit: number,
  ) {}

  async start(): Promise<void> {
    await this.#create();
    const r = await this.#open();
    if (r !== 'attached') throw new Error(`Subscribe ended at once: ${r.code} ${r.details}`);
  }

  async #create(): Promise<void> {
    this.consumerId = (
      await call<{ consumer_id: string }>(this.client(), 'CreateConsumer', {
        ...keys,
        topic: this.topic,
        group_id: this.group,
      })
    ).consumer_id;
  }

  /** Opens a stream on the session: 'attached' once the gateway names it, or how it ended. */
  #open(): Promise<'attached' | Ended> {
    const stream = subscribe(this.client(), undefined, (batch, s) => {
      this.received.push(...batch);
      s.ack(
        batch.map((m) => m.receipt_handle),
        batch.length,
      );
    });
    this.#stream = stream;
    return new Promise((resolve) => {
      let attached = false;
      stream.call.on('data', () => {
        if (attached || stream.consumerId === '') return;
        attached = true;
        resolve('attached');
      });
      stream.call.once('status', () => {
        // Status is set by the stream's own listener, registered first.
        const ended = stream.status ?? { code: 2, details: 'no status' };
        if (!attached) {
          resolve(ended);
          return;
        }
        if (this.#stream !== stream || this.#stopped) return;
        this.#stream = undefined;
        this.#reattaching ??= this.#reattach()
          .catch(() => {})
          .finally(() => {
            this.#reattaching = undefined;
          });
      });
      stream.write({ open: { consumer_id: this.consumerId }, credit: this.credit });
    });
  }

  async #reattach(): Promise<void> {
    this.reconnects++;
    for (let attempt = 0; !this.#stopped; attempt++) {
      await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      if (this.#stopped) return;
      let r: 'attached' | Ended;
      try {
        r = await this.#open();
      } catch {
        continue;
      }
      if (r === 'attached') return;
      // NOT_FOUND naming the consumer: the session is gone; make a new one and attach to it.
      if (r.code === 5 && /consumer ".*" not found/.test(r.details)) {
        await this.#create().catch(() => {});
        attempt = -1;
      }
    }
  }

  disconnect(): void {
    this.#stream?.cancel();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stream?.cancel();
    await this.#reattaching;
    await call(this.client(), 'CleanupConsumer', { consumer_id: this.consumerId }).catch(() => {});
  }
}

/** Sends one keyed message; resolves once the gateway reported it stored, rejects otherwise. */
type KeyedSend = (body: string, key: string) => Promise<void>;

/** SendOrderedMessage, one unary call per message. */
function unarySend(client: RawClient, producerId: string): { send: KeyedSend; close(): void } {
  return {
    send: async (body, key) => {
      await call(client, 'SendOrderedMessage', {
        producer_id: producerId,
        message_body: body,
        sharding_key: key,
      });
    },
    close() {},
  };
}

/**
 * Sends over a Publish stream: sends of one event-loop turn share a frame, each resolves with its
 * own result. A send whose stream ends before its result fails; the next send opens a new stream.
 */
function streamSend(client: RawClient, producerId: string): { send: KeyedSend; close(): void } {
  let stream: PublishStream | undefined;
  const named = new WeakSet<PublishStream>();
  let pending: { stream: PublishStream; messages: PublishEntry[] } | undefined;
  let seq = 0;
  const flush = (): void => {
    if (!pending) return;
    const { stream: s, messages } = pending;
    pending = undefined;
    // The first frame of each stream names the producer.
    s.write(named.has(s) ? { messages } : { producer_id: producerId, messages });
    named.add(s);
  };
  return {
    send: async (body, key) => {
      if (!stream || stream.ended) stream = publish(client);
      const s = stream;
      if (pending && pending.stream !== s) flush();
      if (!pending) {
        pending = { stream: s, messages: [] };
        setImmediate(flush);
      }
      const sequence = String(++seq);
      pending.messages.push({ sequence, message_body: body, sharding_key: key });
      const r = await s.result(sequence);
      if (!r) throw new Error(`the Publish stream ended before result ${sequence}: ${s.status?.details}`);
      if (!r.success) throw new Error(`${r.code}: ${r.message}`);
    },
    close() {
      stream?.end();
    },
  };
}

/** Publishes until the consumer sees one, so a new group's 'latest' position is fixed first. */
async function warmUp(
  client: RawClient,
  producerId: string,
  consumer: ScenarioConsumer,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!consumer.received.some((m) => m.message_body.startsWith('warmup'))) {
    assert.ok(Date.now() < deadline, 'the consumer never received a warm-up message');
    await call(client, 'SendMessage', {
      producer_id: producerId,
      message_body: `warmup-${randomUUID()}`,
    }).catch(() => {});
    await new Promise((r) => setTimeout(r, 500));
  }
}

export interface NoLossOptions extends ScenarioOptions {
  messages?: number;
  keyCount?: number;
  /** Restarts the broker under the gateway; called once, midway. */
  restartBroker: () => Promise<void>;
  /** Whether first deliveries of each key must be in send order (ordered brokers). */
  checkOrder?: boolean;
  /**
   * The RPCs the clients use. 'unary' (the default): SendOrderedMessage, and ReceiveMessages with
   * one AckMessage per delivery. 'streams': Publish, and Subscribe with in-stream acks.
   */
  via?: 'unary' | 'streams';
}

/**
 * No loss: N keyed messages through the gateway while the broker restarts once and the consumer
 * disconnects twice. Every message whose send succeeded is delivered at least once; first
 * deliveries of each key come in send order (when checked); duplicates are counted and reported.
 */
export async function runGatewayNoLoss(
  o: NoLossOptions,
): Promise<{ sent: number; failed: number; duplicates: number }> {
  const scale = o.timeoutScale ?? 1;
  const total = o.messages ?? 10_000;
  const keyCount = o.keyCount ?? 100;
  const gw = await startChildGateway(
    { BROKERS: o.brokerUrl, ACK_TIMEOUT: '20s', CONSUMER_CLEANUP_TIMEOUT: '2m', LOG_LEVEL: 'warn', ...o.env },
    60_000,
  );
  const client = rawClient(gw.grpcPort);
  const via = o.via ?? 'unary';
  const consumer: ScenarioConsumer =
    via === 'streams'
      ? new StreamingConsumer(() => client, o.topic, o.group, 256)
      : new ResilientConsumer(() => client, o.topic, o.group, true);
  let sender: { send: KeyedSend; close(): void } | undefined;
  try {
    await consumer.start();
    const { producer_id } = await call<{ producer_id: string }>(client, 'CreateProducer', {
      ...keys,
      topic: o.topic,
    });
    await warmUp(client, producer_id, consumer, 60_000 * scale);
    const publisher = via === 'streams' ? streamSend(client, producer_id) : unarySend(client, producer_id);
    sender = publisher;

    const acknowledged = new Map<string, number[]>();
    let failed = 0;
    let sent = 0;
    const workers = 16;
    const perWorker = Math.ceil(total / workers);
    const publish = Promise.all(
      Array.from({ length: workers }, async (_, w) => {
        for (let i = 0; i < perWorker; i++) {
          const n = w * perWorker + i;
          if (n >= total) break;
          // Keys belong to one worker each, so a key's sends are sequential: send order is defined.
          const key = `k${(w + workers * (i % Math.ceil(keyCount / workers))) % keyCount}`;
          try {
            await publisher.send(`${key}:${n}`, key);
            sent++;
            const list = acknowledged.get(key) ?? [];
            list.push(n);
            acknowledged.set(key, list);
          } catch {
            failed++;
            // The broker is restarting: back off briefly instead of spinning through the outage.
            await new Promise((r) => setTimeout(r, 200));
          }
        }
      }),
    );
    const disturb = (async () => {
      await eventually(() => sent >= total * 0.2, '20% sent', 300_000 * scale);
      consumer.disconnect();
      await eventually(() => sent >= total * 0.4, '40% sent', 300_000 * scale);
      await o.restartBroker();
      await eventually(() => sent + failed >= total * 0.7, '70% attempted', 300_000 * scale);
      consumer.disconnect();
    })();
    await Promise.all([publish, disturb]);

    const expected = new Set<string>();
    for (const [key, ns] of acknowledged) for (const n of ns) expected.add(`${key}:${n}`);
    const seen = (): Set<string> => new Set(consumer.received.map((m) => m.message_body));
    await eventually(
      () => {
        const s = seen();
        for (const e of expected) if (!s.has(e)) return false;
        return true;
      },
      'every acknowledged send to be delivered',
      240_000 * scale,
    ).catch((err) => {
      const s = seen();
      const missing = [...expected].filter((e) => !s.has(e));
      throw new Error(
        `${missing.length} of ${expected.size} acknowledged messages never delivered, e.g. ${missing.slice(0, 5).join(', ')}`,
        { cause: err },
      );
    });

    const bodies = consumer.received.map((m) => m.message_body).filter((b) => !b.startsWith('warmup'));
    const duplicates = bodies.length - new Set(bodies).size;
    if (o.checkOrder ?? true) {
      const firstSeen = new Map<string, number[]>();
      const seenOnce = new Set<string>();
      for (const b of bodies) {
        if (seenOnce.has(b)) continue;
        seenOnce.add(b);
        const [key, n] = b.split(':') as [string, string];
        const list = firstSeen.get(key) ?? [];
        list.push(Number(n));
        firstSeen.set(key, list);
      }
      for (const [key, ns] of acknowledged) {
        const order = (firstSeen.get(key) ?? []).filter((n) => ns.includes(n));
        assert.deepEqual(order, ns, `first deliveries of ${key} in send order`);
      }
    }
    console.log(
      `no-loss through the gateway (${via}) on ${o.brokerUrl}: ${sent} sends acknowledged, ${failed} failed during the outage, ` +
        `${bodies.length} deliveries, ${duplicates} duplicates, ${consumer.reconnects} consumer reconnects`,
    );
    return { sent, failed, duplicates };
  } finally {
    sender?.close();
    await consumer.stop().catch(() => {});
    client.close();
    await stopGateway(gw);
  }
}

async function stopGateway(gw: ChildGateway): Promise<number | string> {
  if (gw.process.exitCode !== null) return gw.process.exitCode;
  gw.kill('SIGTERM');
  const timer = setTimeout(() => gw.kill('SIGKILL'), 30_000);
  const code = await gw.exited;
  clearTimeout(timer);
  return code;
}

/**
 * SIGTERM of a gateway holding unacked deliveries: it exits 0, and a consumer of the same group on
 * the next gateway receives every one of them.
 */
export async function runSigtermRedelivery(o: ScenarioOptions & { messages?: number }): Promise<void> {
  const scale = o.timeoutScale ?? 1;
  const n = o.messages ?? 20;
  const env = { BROKERS: o.brokerUrl, ACK_TIMEOUT: '60s', LOG_LEVEL: 'warn', ...o.env };
  const first = await startChildGateway(env, 60_000);
  let client = rawClient(first.grpcPort);
  const bodies = Array.from({ length: n }, (_, i) => `unacked-${i}-${randomUUID()}`);
  try {
    const c1 = new ResilientConsumer(() => client, o.topic, o.group, false);
    await c1.start();
    const { producer_id } = await call<{ producer_id: string }>(client, 'CreateProducer', {
      ...keys,
      topic: o.topic,
    });
    // Warm-up messages are acked so the group has a committed position before the test messages.
    await warmUp(client, producer_id, c1, 60_000 * scale);
    for (const m of c1.received.splice(0)) {
      await call(client, 'AckMessage', { consumer_id: c1.consumerId, receipt_handle: m.receipt_handle });
    }
    for (const body of bodies) await call(client, 'SendMessage', { producer_id, message_body: body });
    await eventually(
      () => bodies.every((b) => c1.received.some((m) => m.message_body === b)),
      'all test messages delivered (and left unacked)',
      120_000 * scale,
    );
    // The first consumer must not chase the gateway it is about to lose; its stream stays open
    // until SIGTERM ends it, so the gateway shuts down holding the unacked deliveries.
    c1.abandon();
    const code = await stopGateway(first);
    client.close();
    assert.equal(code, 0, 'the first gateway exits 0 on SIGTERM');

    const second = await startChildGateway(env, 60_000);
    client = rawClient(second.grpcPort);
    try {
      const c2 = new ResilientConsumer(() => client, o.topic, o.group, true);
      await c2.start();
      await eventually(
        () => bodies.every((b) => c2.received.some((m) => m.message_body === b)),
        'the next gateway to redeliver every unacked message',
        180_000 * scale,
      );
      await c2.stop();
    } finally {
      client.close();
      await stopGateway(second);
    }
  } finally {
    client.close();
    await stopGateway(first).catch(() => {});
  }
}
