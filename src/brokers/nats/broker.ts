/**
 * The NATS JetStream adapter (`nats://`), written against nats-server 2.9 and nats.js 3.
 *
 * Model: one stream per topic (`<prefix>_<topic>`, subjects `<prefix>.<topic>.>`), the tag as
 * the last subject token (`_` for none), one durable pull consumer per (topic, group) with
 * explicit acks. Competing subscriptions of a group share that consumer.
 *
 * Per-key order, exactly:
 * - JetStream delivers a consumer's messages in stream order, but with several pull
 *   subscribers on one durable consumer each pull gets the next messages whoever asks, so two
 *   messages of one key can be in flight at two members at once: there is no per-key order
 *   across members. Redelivery (nack, ack timeout, a closed member) also reorders: the
 *   redelivered message arrives after later ones.
 * - With `ordered: true` the adapter holds a key's later messages inside ONE subscription
 *   until the earlier one is acked; after a nack or an ack timeout the key stays held until
 *   that message's redelivery arrives (or, if the server gives it to another member, until a
 *   deadline passes), so one member hands a key's messages to its caller one at a time in
 *   stream order, retries included. It cannot order a key
 *   across members (that would need key-to-member partitioning JetStream 2.9 cannot
 *   coordinate), nor order a redelivery that another member receives. capabilities.ordered is
 *   true in that sense:
 *   a group consumed through one subscription gets every key in publish order.
 *
 * Server features used (2.9): durable pull consumers, a single `filter_subject` (and updating
 * it), nak with delay (2.7.1+), `Nats-Msg-Id` de-duplication. `filter_subjects` (plural) needs
 * 2.10: on 2.9 a multi-tag expression (`a||b`) uses the topic-wide filter and this adapter
 * acks the other tags itself; on 2.10+ the server filters.
 *
 * Delayed and transactional messages: NATS 2.9 cannot hold a message until a time, so they go
 * through the gateway's holding mechanism (../holding/holding.ts): a held message is a record in
 * the internal stream of topic `__mqgate_holding`, consumed by the shared durable consumer
 * `mqgate-holding`, which naks a record not yet due with delay = due - now (the server
 * redelivers it at its due time) and publishes it to its topic when due, with its message id as
 * Nats-Msg-Id, so a second release within the duplicate window is de-duplicated by the server
 * (and counted). That consumer has no max_ack_pending limit (-1): a nak with delay keeps the
 * message pending at the server, and a limit would let long-delayed messages block short ones.
 * A prepared transaction is a held record due at its immunity deadline; commit publishes the
 * message then deletes the held record by sequence, rollback deletes it.
 */

import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import {
  AckPolicy,
  type Consumer,
  type ConsumerConfig,
  type ConsumerInfo,
  DeliverPolicy,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  type PubAck,
  ReplayPolicy,
  RetentionPolicy,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Backoff } from '../../core/backoff.js';
import {
  ClosedError,
  InvalidArgumentError,
  MqError,
  ResourceExhaustedError,
  TopicNotFoundError,
  UnavailableError,
} from '../../core/errors.js';
import { closeAll, delay } from '../../core/lifecycle.js';
import { type OutgoingMessage, toBytes } from '../../core/message.js';
import type { TagFilter } from '../../core/tags.js';
import {
  type Broker,
  type BrokerCapabilities,
  type BrokerCounters,
  type BrokerLimits,
  type BrokerLog,
  type BrokerOpenOptions,
  DEFAULT_ACK_TIMEOUT_MS,
  type HealthStatus,
  MAX_TIMER_MS,
  type PreparedTransaction,
  type Producer,
  type SendResult,
  type SubscribeOptions,
  type Subscription,
} from '../broker.js';
import { HOLDING_GROUP, Holding, type HoldingBackend, type HoldingTier } from '../holding/holding.js';
import { releasedMessage } from '../holding/record.js';
import { heldTransaction } from '../holding/transaction.js';
import { normaliseSubscribe } from '../subscribe-options.js';
import { type NatsConfig, parseNatsUrl } from './config.js';
import { apiCode, isClosedConnection, isTransient, text } from './errors.js';
import { buildHeaders, dedupId } from './message.js';
import {
  consumerName,
  publishSubject,
  streamName,
  topicSubjects,
  validateGroup,
  validateTopic,
} from './names.js';
import { NatsProducer } from './producer.js';
import { NatsSubscription } from './subscription.js';

const BROKER = 'NATS JetStream';
/** JetStream API and PubAck wait. */
const API_TIMEOUT_MS = 5_000;
/**
 * A send retries transient failures (no PubAck, no responders while the server restarts) with
 * the same Nats-Msg-Id until this deadline, so a retry is never stored twice as long as the
 * stream's duplicate window (2 minutes by default) is longer.
 */
const PUBLISH_DEADLINE_MS = 30_000;
const HEALTH_TIMEOUT_MS = 2_000;
const LIMITS: BrokerLimits = Object.freeze({
  // A message waiting in the subscription is kept from redelivery by an "in progress" sent at
  // half the ack timeout but at most every 50 ms (subscription.ts, #keepAlive): below 100 ms the
  // server would redeliver messages the subscription still holds.
  minAckTimeoutMs: 100,
  maxAckTimeoutMs: MAX_TIMER_MS,
  // max_ack_pending of the group's consumer: a window the server tracks per message.
  maxInFlight: 10_000,
});
const CODE_STREAM_NOT_FOUND = 10059;
const CODE_CONSUMER_NOT_FOUND = 10014;
/** The internal topic of held (delayed, prepared) messages; "__" names are refused to clients. */
export const HOLDING_TOPIC = '__mqgate_holding';
/** Held records the mover takes at once; the server-side pending count is unlimited. */
const HOLDING_IN_FLIGHT = 256;
/** The holding consumer's ack_wait: a mover takes milliseconds per record. */
const HOLDING_ACK_WAIT_MS = 3_000;

const nanos = (ms: number): number => Math.round(ms * 1_000_000);

function parseVersion(v: string | undefined): [number, number] {
  const m = /^v?(\d+)\.(\d+)/.exec(v ?? '');
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

interface GroupMembers {
  filterKey: string;
  members: number;
}

export class NatsBroker implements Broker {
  readonly kind = 'nats';
  readonly url: string;
  readonly capabilities: BrokerCapabilities;
  readonly limits = LIMITS;
  readonly #config: NatsConfig;
  readonly #nc: NatsConnection;
  readonly #js: JetStreamClient;
  readonly #jsm: JetStreamManager;
  readonly #log: BrokerLog | undefined;
  readonly #ackTimeoutMs: number;
  readonly #multiFilter: boolean;
  readonly #streams = new Map<string, Promise<string>>();
  readonly #groups = new Map<string, GroupMembers>();
  readonly #producers = new Set<NatsProducer>();
  readonly #subscriptions = new Set<NatsSubscription>();
  readonly #abort = new AbortController();
  readonly #statusLoop: Promise<void>;
  #connected = true;
  #reconnects = 0;
  #closing: Promise<void> | undefined;

  constructor(config: NatsConfig, nc: NatsConnection, jsm: JetStreamManager, options: BrokerOpenOptions) {
    this.#config = config;
    this.url = config.display;
    this.#nc = nc;
    this.#jsm = jsm;
    this.#js = jetstream(nc, { timeout: API_TIMEOUT_MS });
    this.#log = options.log;
    this.#ackTimeoutMs = options.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
    const [major, minor] = parseVersion(nc.info?.version);
    this.#multiFilter = major > 2 || (major === 2 && minor >= 10);
    this.capabilities = {
      ordered: true,
      delay: true,
      transactions: true,
      tagFilter: true,
      durable: config.storage === 'file',
      startPosition: true,
    };
    // Every send waiting out a retry listens on this signal; that is many listeners, not a leak.
    setMaxListeners(0, this.#abort.signal);
    this.#statusLoop = this.#watchStatus();
    this.#holding = new Holding(this.#holdingBackend(), { log: this.#log });
    // Held messages left by an earlier gateway are moved as soon as this one runs; without a
    // holding stream there is nothing to move until the first hold() starts the mover.
    this.#holdingCheck = this.#jsm.streams.info(streamName(config.streamPrefix, HOLDING_TOPIC)).then(
      () => this.#holding.start(),
      () => {},
    );
  }

  readonly #holding: Holding;
  readonly #holdingCheck: Promise<void>;

  #holdingBackend(): HoldingBackend {
    const tier: HoldingTier = { topic: HOLDING_TOPIC, spanMs: Number.POSITIVE_INFINITY };
    return {
      broker: BROKER,
      tiers: [tier],
      store: async (t, record, held) => {
        await this.#ensureStream(t.topic);
        const ack = await this.#publishRaw(t.topic, record, `${held.id}@${held.heldAt}`);
        return { ref: ack.seq };
      },
      release: async (held) => {
        await this.#ensureStream(held.topic);
        const ack = await this.#publishRaw(held.topic, releasedMessage(held), held.id);
        return { duplicate: ack.duplicate };
      },
      subscribe: (t, group) =>
        this.subscribe({
          topic: t.topic,
          group,
          maxInFlight: HOLDING_IN_FLIGHT,
          start: 'earliest',
          // After a server restart, records pending with a nak delay come back after ack_wait:
          // keep it short so they are not late by the default 30 s.
          ackTimeoutMs: HOLDING_ACK_WAIT_MS,
        }),
    };
  }

  /** Holding statistics, for tests and the gateway's metrics. */
  get holding(): Holding {
    return this.#holding;
  }

  counters(): BrokerCounters {
    return this.#holding.counters();
  }

  /** @internal the producers' prepare path: the message is held until commit, rollback or immunity. */
  async prepare(topic: string, message: OutgoingMessage, immunityMs: number): Promise<PreparedTransaction> {
    this.#assertOpen();
    if (!Number.isFinite(immunityMs) || immunityMs < 0) {
      throw new InvalidArgumentError(
        `transaction immunity must be a number of milliseconds >= 0, got ${immunityMs}`,
      );
    }
    this.#checkTag(message);
    const id = dedupId(message) ?? randomUUID();
    const transactionId = randomUUID();
    const stored = await this.#holding.hold(topic, message, {
      id,
      kind: 'transaction',
      dueAt: Date.now() + immunityMs,
      txId: transactionId,
    });
    const seq = stored.ref as number;
    const holdStream = streamName(this.#config.streamPrefix, HOLDING_TOPIC);
    const removeHeld = async (): Promise<boolean> => {
      try {
        return await this.#jsm.streams.deleteMessage(holdStream, seq, false);
      } catch (err) {
        if (err instanceof JetStreamApiError && /no message found|not found/i.test(err.message)) return false;
        throw this.#apiError(`deleting held transaction record ${seq} from ${holdStream}`, err);
      }
    };
    return heldTransaction(id, transactionId, {
      commit: async () => {
        await this.#ensureStream(topic);
        await this.#publishRaw(topic, { ...message, deliverAt: undefined }, id);
        await removeHeld();
      },
      rollback: async () => {
        if (!(await removeHeld())) {
          throw new MqError(
            'FAILED_PRECONDITION',
            `transaction ${transactionId} cannot be rolled back: its immunity time passed and it was committed`,
          );
        }
      },
    });
  }

  #checkTag(message: OutgoingMessage): void {
    if (message.tag !== undefined && message.tag !== '' && /\s|\|\||\*/.test(message.tag)) {
      throw new InvalidArgumentError(
        `tag "${message.tag}" is not valid: a tag contains no spaces, "||" or "*"`,
      );
    }
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type === 'disconnect') {
        this.#setConnected(false);
        this.#log?.warn({ server: s.server }, 'nats disconnected; reconnecting');
      } else if (s.type === 'reconnect') {
        this.#reconnects++;
        this.#setConnected(true);
        this.#log?.info({ server: s.server }, 'nats reconnected');
      } else if (s.type === 'error') {
        this.#log?.warn({ err: text(s.error) }, 'nats server error');
      }
    }
  }

  #setConnected(connected: boolean): void {
    this.#connected = connected;
    for (const sub of this.#subscriptions) sub.connectionChanged();
  }

  #assertOpen(): void {
    if (this.#closing !== undefined) throw new ClosedError(`${BROKER} broker ${this.url} is closed`);
  }

  async producer(topic: string): Promise<Producer> {
    this.#assertOpen();
    validateTopic(topic);
    await this.#ensureStream(topic);
    this.#assertOpen();
    const producer = new NatsProducer(topic, this);
    this.#producers.add(producer);
    return producer;
  }

  /** @internal */
  producerClosed(producer: NatsProducer): void {
    this.#producers.delete(producer);
  }

  /** @internal the producers' send path. */
  async publish(topic: string, message: OutgoingMessage): Promise<SendResult> {
    this.#assertOpen();
    this.#checkTag(message);
    const msgID = dedupId(message) ?? randomUUID();
    if (message.deliverAt !== undefined && message.deliverAt > Date.now()) {
      await this.#holding.hold(topic, message, { id: msgID, kind: 'delay', dueAt: message.deliverAt });
      return { messageId: msgID };
    }
    await this.#publishRaw(topic, message, msgID);
    return { messageId: msgID };
  }

  /** Publishes with retries under one Nats-Msg-Id; the stream must exist. */
  async #publishRaw(topic: string, message: OutgoingMessage, msgID: string): Promise<PubAck> {
    const subject = publishSubject(this.#config.streamPrefix, topic, message.tag);
    const body = toBytes(message.body);
    const headers = buildHeaders(message, msgID, Date.now());
    const deadline = Date.now() + PUBLISH_DEADLINE_MS;
    // Short waits: a publish is a caller waiting, and the stream is usually back within a second.
    const backoff = new Backoff({ initialMs: 100, maxMs: 1000, jitter: 'equal' });
    for (;;) {
      let ack: PubAck;
      try {
        ack = await this.#js.publish(subject, body, {
          msgID,
          headers,
          timeout: Math.max(500, Math.min(API_TIMEOUT_MS, deadline - Date.now())),
        });
      } catch (err) {
        if (this.#closing !== undefined || isClosedConnection(err)) {
          throw new ClosedError(`${BROKER} broker ${this.url} closed while sending to topic "${topic}"`, {
            cause: err,
          });
        }
        const wait = backoff.next();
        if (!isTransient(err) || Date.now() + wait >= deadline) throw this.#publishError(topic, err);
        this.#log?.debug(
          { err: text(err), topic, attempt: backoff.failures },
          'nats publish failed; retrying with the same message id',
        );
        // "No responders" also means the stream vanished (a memory-storage server restarted).
        if (err instanceof Error && err.name === 'JetStreamNotEnabled') this.#streams.delete(topic);
        await delay(wait, this.#abort.signal).catch(() => {});
        if (!this.#streams.has(topic) && this.#connected) await this.#ensureStream(topic).catch(() => {});
        continue;
      }
      if (ack.duplicate) this.#log?.debug({ topic, msgID, seq: ack.seq }, 'nats publish de-duplicated');
      return ack;
    }
  }

  #publishError(topic: string, err: unknown): MqError {
    if (err instanceof MqError) return err;
    const msg = text(err);
    if (/maximum (bytes|messages)|resource limits|insufficient resources/i.test(msg)) {
      return new ResourceExhaustedError(
        `${BROKER} stream ${streamName(this.#config.streamPrefix, topic)} is full (${msg}); raise maxBytes or let consumers catch up`,
        { cause: err },
      );
    }
    if (isTransient(err)) {
      return new UnavailableError(
        `${BROKER} did not acknowledge a message for topic "${topic}" within ${PUBLISH_DEADLINE_MS} ms (${msg}); ` +
          `check that nats-server at ${this.#config.servers.join(',')} is up with JetStream enabled and that stream ` +
          `${streamName(this.#config.streamPrefix, topic)} exists`,
        { cause: err },
      );
    }
    return new MqError('INTERNAL', `${BROKER} rejected a message for topic "${topic}": ${msg}`, {
      cause: err,
    });
  }

  #ensureStream(topic: string): Promise<string> {
    let pending = this.#streams.get(topic);
    if (pending === undefined) {
      pending = this.#createStream(topic);
      this.#streams.set(topic, pending);
      pending.catch(() => {
        if (this.#streams.get(topic) === pending) this.#streams.delete(topic);
      });
    }
    return pending;
  }

  async #createStream(topic: string): Promise<string> {
    const c = this.#config;
    const name = streamName(c.streamPrefix, topic);
    const subjects = topicSubjects(c.streamPrefix, topic);
    try {
      await this.#jsm.streams.info(name);
      return name;
    } catch (err) {
      if (apiCode(err) !== CODE_STREAM_NOT_FOUND) throw this.#apiError(`looking up stream ${name}`, err);
    }
    if (!c.createStreams) {
      throw new TopicNotFoundError(
        `topic "${topic}" has no ${BROKER} stream "${name}" on ${this.url} and this broker was opened with ` +
          `createStreams=false; create it with: nats stream add ${name} --subjects '${subjects}' --storage ${c.storage} ` +
          `--retention ${c.retention} --defaults (or open the broker with createStreams=true)`,
      );
    }
    try {
      await this.#jsm.streams.add({
        name,
        subjects: [subjects],
        storage: c.storage,
        // The holding stream: a record is gone once moved (work queue: its one consumer is the
        // mover), and never expires by age, whatever maxAge says, or a long delay would be lost.
        retention: topic === HOLDING_TOPIC ? RetentionPolicy.Workqueue : c.retention,
        max_bytes: c.maxBytes,
        max_age: topic === HOLDING_TOPIC ? 0 : nanos(c.maxAgeMs),
        num_replicas: c.replicas,
      });
    } catch (err) {
      // Another broker instance created it first (possibly with other limits): use theirs.
      try {
        await this.#jsm.streams.info(name);
      } catch {
        throw this.#apiError(`creating stream ${name}`, err);
      }
    }
    return name;
  }

  #apiError(what: string, err: unknown): MqError {
    if (err instanceof MqError) return err;
    if (isClosedConnection(err))
      return new ClosedError(`${BROKER} broker ${this.url} is closed`, { cause: err });
    if (isTransient(err)) {
      return new UnavailableError(
        `${BROKER} did not answer while ${what} (${text(err)}); is nats-server up?`,
        {
          cause: err,
        },
      );
    }
    return new MqError('INTERNAL', `${BROKER} failed ${what}: ${text(err)}`, { cause: err });
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.#assertOpen();
    validateTopic(options.topic);
    validateGroup(options.group);
    const { topic, group, filter, maxInFlight, ackTimeoutMs, start, ordered } = normaliseSubscribe(
      {
        kind: BROKER,
        capabilities: this.capabilities,
        limits: LIMITS,
        defaultAckTimeoutMs: this.#ackTimeoutMs,
      },
      options,
    );

    const stream = await this.#ensureStream(topic);
    const durable = consumerName(group);
    const prefix = this.#config.streamPrefix;
    const tags = filter.tags === undefined ? undefined : [...filter.tags].sort();
    const filterKey = tags === undefined ? '*' : tags.join('||');
    const filterSubjects =
      tags === undefined
        ? [topicSubjects(prefix, topic)]
        : tags.length === 1 || this.#multiFilter
          ? tags.map((t) => publishSubject(prefix, topic, t))
          : [topicSubjects(prefix, topic)];
    const localFilter: TagFilter | undefined =
      tags !== undefined && tags.length > 1 && !this.#multiFilter ? filter : undefined;

    // A group is ONE durable consumer with one filter. Two live members here with different
    // filters would silently steal each other's messages, so that is refused; a member with a
    // new filter when none is live updates the consumer (last writer wins across processes).
    const groupKey = `${stream}/${durable}`;
    const members = this.#groups.get(groupKey);
    if (members !== undefined && members.members > 0 && members.filterKey !== filterKey) {
      throw new MqError(
        'FAILED_PRECONDITION',
        `group "${group}" already subscribes to topic "${topic}" with tag filter "${members.filterKey}" here; on ${BROKER} ` +
          `a group is one durable consumer with one filter, so every member must use the same filter. Close those ` +
          `subscriptions first (the consumer's filter is then changed to "${filterKey}"), or use another group name`,
      );
    }
    const entry = members ?? { filterKey, members: 0 };
    entry.filterKey = filterKey;
    entry.members++;
    this.#groups.set(groupKey, entry);
    const release = (): void => {
      entry.members--;
      if (entry.members === 0 && this.#groups.get(groupKey) === entry) this.#groups.delete(groupKey);
    };

    const desired = {
      ack_wait: nanos(ackTimeoutMs),
      // The holding consumer's naked-with-delay records stay pending at the server: no limit there.
      max_ack_pending: topic === HOLDING_TOPIC && group === HOLDING_GROUP ? -1 : maxInFlight,
      filterSubjects,
      // A work-queue stream holds only unconsumed messages and its consumers must deliver all.
      deliver_policy:
        start === 'earliest' || this.#config.retention === 'workqueue'
          ? DeliverPolicy.All
          : typeof start === 'number'
            ? DeliverPolicy.StartTime
            : DeliverPolicy.New,
      opt_start_time:
        typeof start === 'number' && this.#config.retention !== 'workqueue'
          ? new Date(start).toISOString()
          : undefined,
    };
    const broker = this;
    const connection = {
      get connected(): boolean {
        return broker.#connected && !broker.#nc.isClosed();
      },
    };
    let consumer: Consumer;
    try {
      const info = await this.#ensureConsumer(stream, durable, desired, topic, group);
      consumer = this.#js.consumers.getConsumerFromInfo(info);
      this.#assertOpen();
    } catch (err) {
      release();
      throw err;
    }
    const sub: NatsSubscription = new NatsSubscription({
      topic,
      group,
      prefix,
      maxInFlight,
      ackTimeoutMs,
      ordered,
      localFilter,
      consumer,
      recover: async () => {
        // Re-create what vanished (a memory-storage server restarted, someone deleted it), but
        // never rewrite an existing consumer from here: that could undo another member's change.
        this.#streams.delete(topic);
        await this.#ensureStream(topic);
        const info = await this.#ensureConsumer(stream, durable, desired, topic, group, true);
        return this.#js.consumers.getConsumerFromInfo(info);
      },
      connection,
      log: this.#log,
      onClosed: () => {
        this.#subscriptions.delete(sub);
        release();
      },
    });
    this.#subscriptions.add(sub);
    return sub;
  }

  async #ensureConsumer(
    stream: string,
    durable: string,
    desired: {
      ack_wait: number;
      max_ack_pending: number;
      filterSubjects: string[];
      deliver_policy: DeliverPolicy;
      opt_start_time: string | undefined;
    },
    topic: string,
    group: string,
    recovering = false,
  ): Promise<ConsumerInfo> {
    const filterConfig = (subjects: string[]): Partial<ConsumerConfig> =>
      subjects.length === 1
        ? { filter_subject: subjects[0], filter_subjects: undefined }
        : { filter_subject: undefined, filter_subjects: subjects };
    let info: ConsumerInfo | undefined;
    try {
      info = await this.#jsm.consumers.info(stream, durable);
    } catch (err) {
      if (apiCode(err) !== CODE_CONSUMER_NOT_FOUND)
        throw this.#apiError(`looking up consumer ${durable} on ${stream}`, err);
    }
    if (info === undefined) {
      try {
        return await this.#jsm.consumers.add(stream, {
          durable_name: durable,
          ack_policy: AckPolicy.Explicit,
          deliver_policy: desired.deliver_policy,
          ...(desired.opt_start_time ? { opt_start_time: desired.opt_start_time } : {}),
          replay_policy: ReplayPolicy.Instant,
          ack_wait: desired.ack_wait,
          max_ack_pending: desired.max_ack_pending,
          max_deliver: -1,
          ...filterConfig(desired.filterSubjects),
        });
      } catch (err) {
        const msg = text(err);
        if (/workqueue/i.test(msg)) {
          throw new MqError(
            'FAILED_PRECONDITION',
            `topic "${topic}" uses a work-queue stream (retention=workqueue), which allows only one group per tag ` +
              `(server said: ${msg}); use one group for this topic, or open the broker with retention=limits or interest`,
            { cause: err },
          );
        }
        throw this.#apiError(`creating consumer ${durable} for group "${group}" on ${stream}`, err);
      }
    }
    if (recovering) return info;
    const cfg = info.config;
    const current = cfg.filter_subjects?.length
      ? cfg.filter_subjects
      : cfg.filter_subject
        ? [cfg.filter_subject]
        : [];
    const sameFilter =
      current.length === desired.filterSubjects.length &&
      [...current].sort().every((s, i) => s === [...desired.filterSubjects].sort()[i]);
    if (sameFilter && cfg.ack_wait === desired.ack_wait && cfg.max_ack_pending === desired.max_ack_pending) {
      return info;
    }
    if (!sameFilter) {
      this.#log?.warn(
        { stream, consumer: durable, from: current, to: desired.filterSubjects },
        'changing the tag filter of an existing group; members elsewhere still running with the old filter now receive the new one',
      );
    }
    try {
      return await this.#jsm.consumers.update(stream, durable, {
        ack_wait: desired.ack_wait,
        max_ack_pending: desired.max_ack_pending,
        ...filterConfig(desired.filterSubjects),
      });
    } catch (err) {
      if (isTransient(err) || isClosedConnection(err))
        throw this.#apiError(`updating consumer ${durable}`, err);
      throw new MqError(
        'FAILED_PRECONDITION',
        `group "${group}" exists on topic "${topic}" with another configuration (filter ${current.join(',') || '(none)'}) and ` +
          `${BROKER} refused to change it: ${text(err)}; delete it with: nats consumer rm ${stream} ${durable} (the group ` +
          'then starts over), or use another group name',
        { cause: err },
      );
    }
  }

  async health(): Promise<HealthStatus> {
    if (this.#closing !== undefined) return { ok: false, detail: 'closed' };
    if (!this.#connected || this.#nc.isClosed()) {
      return { ok: false, detail: `disconnected from ${this.url}; the client is reconnecting` };
    }
    const timeout = new AbortController();
    try {
      const rtt = await Promise.race([
        this.#nc.rtt(),
        delay(HEALTH_TIMEOUT_MS, timeout.signal).then(() => {
          throw new Error(`no reply within ${HEALTH_TIMEOUT_MS} ms`);
        }),
      ]);
      return {
        ok: true,
        detail: `connected to nats-server ${this.#nc.info?.version ?? '?'} at ${this.#nc.getServer()} (rtt ${rtt} ms, ${this.#reconnects} reconnects)`,
      };
    } catch (err) {
      return { ok: false, detail: `nats-server at ${this.#nc.getServer()} does not answer: ${text(err)}` };
    } finally {
      timeout.abort();
    }
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#abort.abort();
    await closeAll([
      () => this.#holdingCheck,
      () => this.#holding.close(),
      ...[...this.#subscriptions].map((s) => () => s.close()),
      ...[...this.#producers].map((p) => () => p.close()),
      // Flush the naks of released deliveries, then close; flush cannot finish while
      // disconnected, so it is bounded.
      async () => {
        if (this.#nc.isClosed() || !this.#connected) return;
        const timeout = new AbortController();
        try {
          await Promise.race([this.#nc.flush(), delay(HEALTH_TIMEOUT_MS, timeout.signal).catch(() => {})]);
        } finally {
          timeout.abort();
        }
      },
      () => this.#nc.close(),
      () => this.#statusLoop,
    ]);
  }
}

export async function openNatsBroker(url: URL, options: BrokerOpenOptions = {}): Promise<Broker> {
  const config = parseNatsUrl(url);
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: config.servers,
      user: config.user,
      pass: config.pass,
      token: config.token,
      name: 'mqgate',
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      timeout: API_TIMEOUT_MS,
      // Otherwise every request (each JetStream publish is one) builds two Error objects with
      // stack traces up front, in case it fails later: about a third of a publish's CPU. Our
      // errors name the topic and operation themselves.
      noAsyncTraces: true,
    });
  } catch (cause) {
    throw new UnavailableError(
      `cannot connect to NATS at ${config.servers.join(', ')}: ${text(cause)}; is nats-server running there (with -js for JetStream)?`,
      { cause },
    );
  }
  let jsm: JetStreamManager;
  try {
    jsm = await jetstreamManager(nc, { timeout: API_TIMEOUT_MS });
  } catch (cause) {
    await nc.close().catch(() => {});
    throw new UnavailableError(
      `nats-server at ${config.servers.join(', ')} has no JetStream for this account (${text(cause)}); start it with -js or enable JetStream in its config`,
      { cause },
    );
  }
  return new NatsBroker(config, nc, jsm, options);
}
