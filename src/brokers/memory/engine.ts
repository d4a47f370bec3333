import { ClosedError, InvalidArgumentError, ResourceExhaustedError } from '../../core/errors.js';
import { type OutgoingMessage, toBytes } from '../../core/message.js';
import { Scheduler } from '../../core/scheduler.js';
import type { BrokerLog } from '../broker.js';
import { checkOptionalString } from './broker.js';
import type { MemoryBrokerSettings } from './config.js';
import type { Group } from './group.js';
import type { MemoryProducer } from './producer.js';
import type { MemorySubscription } from './subscription.js';
import {
  BODY_OVERHEAD_BYTES,
  DLQ_PROPERTIES,
  deadLetterTopic,
  type Entry,
  formatBytes,
  IdGenerator,
  MESSAGE_BASE_BYTES,
  OrphanList,
  PROPERTY_BYTES,
  Slot,
  type StoredMessage,
  stringBytes,
  Topic,
} from './topic.js';

/**
 * What the broker's topics share: the one scheduler, the byte limits across topics, message ids,
 * dead-lettering, and every open producer and subscription (closed with the broker).
 */

export class Engine {
  readonly topics = new Map<string, Topic>();
  readonly subscriptions = new Set<MemorySubscription>();
  readonly producers = new Set<MemoryProducer>();
  readonly scheduler: Scheduler;
  readonly ids = new IdGenerator();
  closed = false;
  /** Groups forgotten after groupRetentionMs without a subscription. */
  groupsExpired = 0;
  /** Messages no group owed, dropped to make room for new ones. */
  backlogDropped = 0;
  /** Charged bytes of every topic together; counted against maxBytes. */
  retainedBytes = 0;
  readonly orphans = new OrphanList();

  constructor(
    readonly settings: MemoryBrokerSettings,
    readonly log: BrokerLog | undefined,
  ) {
    this.scheduler = new Scheduler({
      onError: (err) => {
        if (!log) throw err;
        log.error({ err }, 'memory broker: scheduled task failed');
      },
    });
  }

  assertOpen(): void {
    if (this.closed) {
      throw new ClosedError('memory broker is closed; open a new one with openBroker("memory://")');
    }
  }

  /** Throws when `need` more bytes would not fit in maxBytes even after dropping every orphan. */
  checkRoom(need: number): void {
    const limit = this.settings.maxBytes;
    if (this.retainedBytes - this.orphans.bytes + need <= limit) return;
    throw new ResourceExhaustedError(
      `memory broker is full: ${this.retainedBytes} bytes retained across ${this.topics.size} topics of its ` +
        `${formatBytes(limit)} limit (maxBytes), ${this.retainedBytes - this.orphans.bytes} of them owed to ` +
        `consumer groups that have not acked them (or delayed, or prepared); retry after consumers catch up, ` +
        `or raise maxBytes in the broker URL (e.g. memory://?maxBytes=1GiB)`,
      { retryable: true },
    );
  }

  /** Drops the oldest orphans of any topic until `need` more bytes fit in maxBytes. */
  makeRoom(need: number): void {
    const limit = this.settings.maxBytes;
    for (let slot = this.orphans.oldest; slot !== undefined; slot = this.orphans.oldest) {
      if (this.retainedBytes + need <= limit) return;
      // A topic's orphans are appended to its deque and to this list together and leave both
      // together, so the oldest here is its topic's oldest. Unlinking it regardless guarantees
      // progress should that ever not hold.
      if (this.topics.get(slot.msg.topic)?.dropOldestOrphan(slot) !== true) this.orphans.remove(slot);
    }
  }

  /** Forgets every topic and message (the broker is closing). */
  clear(): void {
    this.topics.clear();
    this.orphans.clear();
    this.retainedBytes = 0;
  }

  topic(name: string): Topic {
    let topic = this.topics.get(name);
    if (topic === undefined) {
      topic = new Topic(name, this);
      this.topics.set(name, topic);
    }
    return topic;
  }

  makeSlot(topic: Topic, message: OutgoingMessage, now: number): Slot {
    if (message === null || typeof message !== 'object') {
      throw new InvalidArgumentError('message must be an object with a body');
    }
    const { body: rawBody, key, tag, businessKey, properties, deliverAt } = message;
    let body: Uint8Array;
    // A fresh array either way: Buffer.from(string) may return a view into a shared pool slab,
    // and a caller's Uint8Array may be reused by the caller or be a view pinning a larger buffer.
    if (typeof rawBody === 'string') body = toBytes(rawBody);
    else if (rawBody instanceof Uint8Array) body = new Uint8Array(rawBody);
    else throw new InvalidArgumentError('message body must be a string or a Uint8Array');
    checkOptionalString(key, 'message key');
    checkOptionalString(tag, 'message tag');
    checkOptionalString(businessKey, 'message businessKey');
    let size =
      MESSAGE_BASE_BYTES +
      BODY_OVERHEAD_BYTES +
      body.byteLength +
      stringBytes(key) +
      stringBytes(tag) +
      stringBytes(businessKey);
    const props: Record<string, string> = {};
    if (properties !== undefined) {
      for (const name of Object.keys(properties)) {
        const value = properties[name];
        if (typeof value !== 'string') {
          throw new InvalidArgumentError(`message property "${name}" must be a string`);
        }
        props[name] = value;
        size += PROPERTY_BYTES + stringBytes(name) + stringBytes(value);
      }
    }
    if (deliverAt !== undefined && !Number.isFinite(deliverAt)) {
      throw new InvalidArgumentError(`message deliverAt ${String(deliverAt)} is not an epoch-ms timestamp`);
    }
    const max = Math.min(this.settings.maxMessageBytes, this.settings.maxTopicBytes);
    if (size > max) {
      throw new InvalidArgumentError(
        `message for topic "${topic.name}" is ${size} bytes with metadata and the broker's bookkeeping; ` +
          `the limit is ${formatBytes(max)} (maxMessageBytes / maxTopicBytes in the broker URL)`,
      );
    }
    // Frozen because every group and every redelivery hands out this same object.
    Object.freeze(props);
    const msg: StoredMessage = {
      id: this.ids.next(now),
      topic: topic.name,
      body,
      key,
      tag,
      businessKey,
      properties: props,
      deliverAt,
      bornAt: now,
    };
    return new Slot(msg, size);
  }

  /**
   * Bytes are already reserved; makes the message visible now or at its deliverAt. A delayed
   * message belongs to the groups that exist when it becomes visible, as in RocketMQ, so a group
   * created in between ('latest') receives it.
   */
  publish(topic: Topic, slot: Slot): void {
    const at = slot.msg.deliverAt;
    if (at !== undefined && at > Date.now()) {
      topic.delayed++;
      this.scheduler.at(at, () => {
        topic.delayed--;
        topic.append(slot);
      });
      return;
    }
    topic.append(slot);
  }

  /** Moves an exhausted message to `%DLQ%<group>`; false when that topic cannot take it now. */
  deadLetter(group: Group, entry: Entry, reason: string): boolean {
    if (this.closed) return false;
    const m = entry.slot.msg;
    const dlq = this.topic(deadLetterTopic(group.name));
    try {
      const slot = this.makeSlot(
        dlq,
        {
          body: m.body,
          key: m.key,
          tag: m.tag,
          businessKey: m.businessKey,
          properties: {
            ...m.properties,
            [DLQ_PROPERTIES.originTopic]: m.topic,
            [DLQ_PROPERTIES.originMessageId]: m.id,
            [DLQ_PROPERTIES.group]: group.name,
            [DLQ_PROPERTIES.attempts]: String(entry.attempts),
            [DLQ_PROPERTIES.reason]: reason,
          },
        },
        Date.now(),
      );
      dlq.reserve(slot);
      dlq.append(slot);
      this.log?.warn(
        { topic: m.topic, group: group.name, messageId: m.id, attempts: entry.attempts, reason },
        'memory broker: message moved to dead-letter topic',
      );
      return true;
    } catch (err) {
      this.log?.error(
        { err, topic: m.topic, group: group.name, messageId: m.id },
        'memory broker: dead-letter topic cannot take the message; it stays with its group',
      );
      return false;
    }
  }
}
