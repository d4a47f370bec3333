import { randomUUID } from 'node:crypto';
import type { MessageOptions, MessageView } from 'rocketmq-client-nodejs';
import { ClosedError, InvalidArgumentError, MqError } from '../../core/errors.js';
import { closeOnce, withTimeout } from '../../core/lifecycle.js';
import { type OutgoingMessage, toBytes } from '../../core/message.js';
import type { BrokerLog, Credentials, PreparedTransaction, Producer, SendResult } from '../broker.js';
import type { RocketMqUrl } from './config.js';
import {
  GuardedProducer,
  LibraryGuard,
  libraryLogger,
  MessageType,
  TransactionResolution,
  topicHint,
  toRocketMqError,
} from './library.js';
import type { TopicRoute } from './route.js';

type TxState = 'pending' | 'committed' | 'rolledback';

/**
 * The adapter's record of prepared transactions, answering the broker's transaction checks.
 * Shared by every producer of one broker because the proxy may send a check to any client that
 * publishes to the topic. Unknown ids (another process's, or forgotten) answer UNKNOWN so the
 * broker asks again and finally discards them after its check limit.
 */
export class TransactionLedger {
  readonly #states = new Map<string, TxState>();
  readonly #resolved: string[] = [];
  static readonly KEEP_RESOLVED = 10_000;

  set(messageId: string, state: TxState): void {
    this.#states.set(messageId, state);
    if (state !== 'pending') {
      this.#resolved.push(messageId);
      // Resolved answers are kept for late checks, bounded so the ledger cannot grow forever.
      while (this.#resolved.length > TransactionLedger.KEEP_RESOLVED) {
        const old = this.#resolved.shift();
        if (old !== undefined && this.#states.get(old) !== 'pending') this.#states.delete(old);
      }
    }
  }

  get(messageId: string): TxState | undefined {
    return this.#states.get(messageId);
  }

  /** The answer to a broker check. */
  resolve(messageId: string): number {
    const state = this.#states.get(messageId);
    if (state === 'committed') return TransactionResolution.COMMIT;
    if (state === 'rolledback') return TransactionResolution.ROLLBACK;
    return TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED;
  }

  get pending(): number {
    let n = 0;
    for (const s of this.#states.values()) if (s === 'pending') n++;
    return n;
  }
}

export interface ProducerEntryOptions {
  url: RocketMqUrl;
  topic: string;
  route: TopicRoute;
  credentials: Credentials | undefined;
  ledger: TransactionLedger;
  log: BrokerLog | undefined;
  onIdle: (entry: ProducerEntry) => Promise<void>;
}

/**
 * One library Producer per (credentials, topic), shared by the adapter producers on that pair.
 * It stays open while an adapter producer references it or a transaction it prepared is pending,
 * so commit() and the broker's checks keep working after the producer handle is closed.
 */
export class ProducerEntry {
  readonly topic: string;
  readonly route: TopicRoute;
  readonly client: GuardedProducer;
  readonly #options: ProducerEntryOptions;
  readonly #started: Promise<void>;
  refs = 0;
  pendingTx = 0;
  #closing = false;

  constructor(options: ProducerEntryOptions) {
    this.#options = options;
    this.topic = options.topic;
    this.route = options.route;
    const { url, credentials, ledger, log } = options;
    this.client = new GuardedProducer(
      {
        endpoints: url.endpoint,
        namespace: url.namespace,
        requestTimeout: url.requestTimeoutMs,
        topics: [options.topic],
        sessionCredentials: credentials
          ? { accessKey: credentials.accessKeyId, accessSecret: credentials.accessKeySecret }
          : undefined,
        logger: libraryLogger(log, { topic: options.topic }),
        checker: {
          check: async (view: MessageView) => ledger.resolve(view.messageId),
        },
      },
      new LibraryGuard(log),
    );
    this.#started = this.client.startup();
    // Observed here so a failure never surfaces as an unhandled rejection; callers await start().
    this.#started.catch(() => {});
  }

  get closing(): boolean {
    return this.#closing;
  }

  async start(): Promise<void> {
    const { url, topic } = this.#options;
    try {
      await withTimeout(
        this.#started,
        url.requestTimeoutMs * 3 + 5_000,
        `RocketMQ producer start-up for "${topic}"`,
      );
    } catch (err) {
      throw toRocketMqError(err, { action: 'opening producer', topic, cluster: url.cluster });
    }
  }

  /** Called when a handle or a transaction lets go; closes the client when nothing holds it. */
  release(): Promise<void> {
    if (this.refs !== 0 || this.pendingTx !== 0 || this.#closing) return Promise.resolve();
    // Marked before any await so a concurrent producer() opens a fresh entry instead.
    this.#closing = true;
    return this.#options.onIdle(this);
  }

  readonly close = closeOnce(async () => {
    this.#closing = true;
    // shutdown() during startup() would leave the intervals startup() creates afterwards.
    await this.#started.catch(() => {});
    try {
      await this.client.shutdown();
    } finally {
      await this.client.guard.afterShutdown();
    }
  });
}

/** What a producer handle needs from its broker. */
export interface ProducerHost {
  readonly url: RocketMqUrl;
  readonly ledger: TransactionLedger;
}

function toBuffer(body: Uint8Array | string): Buffer {
  const bytes = toBytes(body);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Carries `key` on non-FIFO topics. Not "__SHARDINGKEY": RocketMQ 5 reads that property as the
 * FIFO message group and then refuses the message on a NORMAL topic.
 */
export const SHARDING_KEY_PROPERTY = 'mqgate.key';

const TYPE_NAMES: Record<number, string> = {
  [MessageType.NORMAL]: 'NORMAL',
  [MessageType.FIFO]: 'FIFO',
  [MessageType.DELAY]: 'DELAY',
  [MessageType.TRANSACTION]: 'TRANSACTION',
};

export class RocketMqProducer implements Producer {
  readonly topic: string;
  readonly #entry: ProducerEntry;
  readonly #host: ProducerHost;
  #closed = false;

  constructor(entry: ProducerEntry, host: ProducerHost) {
    this.topic = entry.topic;
    this.#entry = entry;
    this.#host = host;
    entry.refs++;
  }

  /** The library client's id: equal for handles sharing a client (same credentials and topic). */
  get clientKey(): string {
    return this.#entry.client.clientId;
  }

  #typesText(): string {
    return [...this.#entry.route.acceptTypes].map((t) => TYPE_NAMES[t] ?? String(t)).join('|') || 'unknown';
  }

  #mismatch(wanted: number, why: string): MqError {
    const name = TYPE_NAMES[wanted] ?? String(wanted);
    return new MqError(
      'FAILED_PRECONDITION',
      `topic "${this.topic}" accepts ${this.#typesText()} messages, but ${why} needs a ${name} topic; ` +
        `${topicHint(`<${name.toLowerCase()}-topic>`, this.#host.url.cluster, name)}; ` +
        'or send every type to one MIXED topic (+message.type=MIXED, on a broker started with enableMixedMessageType=true)',
    );
  }

  #options(message: OutgoingMessage, transactional: boolean): MessageOptions {
    if (message.tag !== undefined && (message.tag === '' || /[|\s]/.test(message.tag))) {
      throw new InvalidArgumentError(
        `tag "${message.tag}" is not a RocketMQ tag: no spaces or "|", not empty`,
      );
    }
    const accepts = this.#entry.route.acceptTypes;
    const options: MessageOptions = {
      topic: this.topic,
      body: toBuffer(message.body),
      tag: message.tag,
      keys: message.businessKey ? [message.businessKey] : undefined,
      properties: message.properties ? new Map(Object.entries(message.properties)) : undefined,
    };
    if (transactional) {
      if (!accepts.has(MessageType.TRANSACTION)) throw this.#mismatch(MessageType.TRANSACTION, 'prepare()');
      if (message.deliverAt !== undefined || message.key !== undefined) {
        throw new InvalidArgumentError(
          'RocketMQ transactional messages cannot carry a key (message group) or deliverAt',
        );
      }
      return options;
    }
    const fifoOnly = accepts.has(MessageType.FIFO) && !accepts.has(MessageType.NORMAL);
    const delayOnly = accepts.has(MessageType.DELAY) && !accepts.has(MessageType.NORMAL);
    if (message.deliverAt !== undefined) {
      if (!accepts.has(MessageType.DELAY)) throw this.#mismatch(MessageType.DELAY, 'deliverAt');
      options.deliveryTimestamp = new Date(message.deliverAt);
    } else if (delayOnly) {
      // A DELAY topic refuses plain messages; "deliver now" is the faithful translation.
      options.deliveryTimestamp = new Date();
    }
    // A delayed message cannot join a FIFO message group. That only arises on a MIXED topic (a
    // FIFO topic refuses deliverAt above), where its key then travels as a property, as on a
    // NORMAL topic: delayed messages keep no per-key order there.
    if (
      accepts.has(MessageType.FIFO) &&
      !options.deliveryTimestamp &&
      (message.key !== undefined || fifoOnly)
    ) {
      // Keyless messages on a FIFO topic promise no order, so they get their own group each.
      options.messageGroup = message.key ?? randomUUID();
    }
    if (message.key !== undefined && !options.messageGroup) {
      // RocketMQ has no ordering key outside FIFO topics; the key still travels with the message
      // as a property, so consumers see it.
      options.properties ??= new Map();
      options.properties.set(SHARDING_KEY_PROPERTY, message.key);
    }
    if (
      accepts.size > 0 &&
      !accepts.has(MessageType.NORMAL) &&
      !options.messageGroup &&
      !options.deliveryTimestamp
    ) {
      throw new MqError(
        'FAILED_PRECONDITION',
        `topic "${this.topic}" accepts only ${this.#typesText()} messages; use prepare() for a TRANSACTION topic, or send to a NORMAL topic`,
      );
    }
    return options;
  }

  #check(): void {
    if (this.#closed || this.#entry.closing) {
      throw new ClosedError(`RocketMQ producer for topic "${this.topic}" is closed`);
    }
  }

  async send(message: OutgoingMessage): Promise<SendResult> {
    this.#check();
    const options = this.#options(message, false);
    try {
      const receipt = await this.#entry.client.send(options);
      if (!receipt) throw new Error('no send receipt');
      return { messageId: receipt.messageId };
    } catch (err) {
      throw toRocketMqError(err, { action: 'sending', topic: this.topic, cluster: this.#host.url.cluster });
    }
  }

  async prepare(message: OutgoingMessage): Promise<PreparedTransaction> {
    this.#check();
    const options = this.#options(message, true);
    const entry = this.#entry;
    const ledger = this.#host.ledger;
    const ctx = { action: 'preparing a transaction', topic: this.topic, cluster: this.#host.url.cluster };
    let transaction: ReturnType<GuardedProducer['beginTransaction']>;
    let receipt: Awaited<ReturnType<GuardedProducer['send']>>;
    entry.pendingTx++;
    try {
      transaction = entry.client.beginTransaction();
      receipt = await entry.client.send(options, transaction);
      if (!receipt) throw new Error('no send receipt');
    } catch (err) {
      entry.pendingTx--;
      await entry.release();
      throw toRocketMqError(err, ctx);
    }
    const messageId = receipt.messageId;
    const transactionId = receipt.transactionId;
    ledger.set(messageId, 'pending');
    let released = false;
    const ends: Partial<Record<'committed' | 'rolledback', Promise<void>>> = {};
    const finish = async (outcome: 'committed' | 'rolledback'): Promise<void> => {
      const current = ledger.get(messageId);
      if (current !== undefined && current !== 'pending' && current !== outcome) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `transaction ${transactionId} was already ${current}; it cannot be ${outcome} too`,
        );
      }
      if (entry.closing) throw new ClosedError('the RocketMQ broker was closed before the transaction ended');
      // Recorded first: a broker check arriving during the call gets the caller's decision.
      ledger.set(messageId, outcome);
      try {
        await (outcome === 'committed' ? transaction.commit() : transaction.rollback());
      } catch (err) {
        throw toRocketMqError(err, {
          ...ctx,
          action: outcome === 'committed' ? 'committing' : 'rolling back',
        });
      } finally {
        if (!released) {
          released = true;
          entry.pendingTx--;
          // Not awaited: the caller's commit is done; the broker's close() awaits the shutdown.
          entry.release().catch(() => {});
        }
      }
    };
    /** Repeating the same decision is a no-op once it succeeded; a failed one may be retried. */
    const end = (outcome: 'committed' | 'rolledback'): Promise<void> => {
      let p = ends[outcome];
      if (!p) {
        p = finish(outcome);
        ends[outcome] = p;
        p.catch(() => {
          if (ends[outcome] === p) delete ends[outcome];
        });
      }
      return p;
    };
    return {
      messageId,
      transactionId,
      commit: () => end('committed'),
      rollback: () => end('rolledback'),
    };
  }

  readonly close = closeOnce(async () => {
    this.#closed = true;
    this.#entry.refs--;
    await this.#entry.release();
  });
}
