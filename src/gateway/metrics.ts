import { type IntervalHistogram, monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { BrokerCounters } from '../brokers/broker.js';
import { REFUSAL_REASONS, type RefusalReason } from './audit.js';

/**
 * The gateway's metrics: plain counters on the hot path (an increment each), turned into
 * Prometheus metrics only when scraped, and into JSON for `curl | jq` with the field names
 * existing dashboards of this gRPC service read (`active_producers`, `*_leak_detections`, ...).
 * Every counter here is incremented by a real code path (tests assert each one moves).
 */

export interface LiveCounts {
  brokerProducers: number;
  producerHandles: number;
  sessions: number;
  streams: number;
  inFlight: number;
  pendingTransactions: number;
  connections: number;
  publishStreams: number;
}

/** What the metrics read from outside the counters, at scrape time. */
export interface MetricSources {
  live(): LiveCounts;
  refusals(): Readonly<Record<RefusalReason, number>>;
  /** Each configured broker's kind and its counters (where the adapter keeps any). */
  brokers(): ReadonlyArray<{ broker: string; counters: BrokerCounters }>;
  /** Each configured broker's health (the router's shared probe), for mqgate_broker_up. */
  brokerHealth?(): Promise<ReadonlyArray<{ broker: string; ok: boolean }>>;
}

/** Sampling interval of the event-loop delay monitor. */
const ELD_RESOLUTION_MS = 10;

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly counts = {
    messagesSent: 0,
    messagesDelivered: 0,
    messagesAcked: 0,
    messagesNacked: 0,
    messagesRedelivered: 0,
    channelFullEvents: 0,
    producerLeakDetections: 0,
    consumerLeakDetections: 0,
    producersReopened: 0,
    transactionsCommitted: 0,
    transactionsRolledBack: 0,
    transactionsAutoCommitted: 0,
    streamsStalled: 0,
  };
  #rpcCounts = new Map<string, number>();
  #rpcTotal = 0;
  #rpcFailed = 0;
  #rpcSeconds = 0;
  readonly #rpcDuration: Histogram<'method'>;
  /** Label look-ups cost a string key per call; one child per method is resolved once. */
  readonly #durationByMethod = new Map<string, ReturnType<Histogram<'method'>['labels']>>();
  /** Created by start(): an unstarted gateway (failed start-up) holds no histogram handle. */
  #eld: IntervalHistogram | undefined;
  readonly #started = Date.now();
  readonly #live: () => LiveCounts;
  readonly #sources: MetricSources;

  constructor(sources: MetricSources) {
    this.#sources = sources;
    this.#live = () => sources.live();
    const r = this.registry;
    const counter = (name: string, help: string, get: () => number): void => {
      new Counter({
        name,
        help,
        registers: [r],
        collect() {
          this.reset();
          this.inc(get());
        },
      });
    };
    const gauge = (name: string, help: string, get: () => number): void => {
      new Gauge({
        name,
        help,
        registers: [r],
        collect() {
          this.set(get());
        },
      });
    };
    const c = this.counts;
    counter(
      'mqgate_messages_sent_total',
      'Messages accepted by a broker through the gateway.',
      () => c.messagesSent,
    );
    counter(
      'mqgate_messages_delivered_total',
      'Messages written to consumer streams.',
      () => c.messagesDelivered,
    );
    counter('mqgate_messages_acked_total', 'Deliveries acked by consumers.', () => c.messagesAcked);
    counter('mqgate_messages_nacked_total', 'Deliveries given back by NackMessage.', () => c.messagesNacked);
    counter(
      'mqgate_messages_redelivered_total',
      'Deliveries released for redelivery (ack timeout or stream end).',
      () => c.messagesRedelivered,
    );
    counter(
      'mqgate_channel_full_events_total',
      'Times a session reached MESSAGE_BUFFER_SIZE unacked deliveries and stopped pulling.',
      () => c.channelFullEvents,
    );
    counter(
      'mqgate_producer_leak_detections_total',
      'Producer handles dropped after PRODUCER_HANDLE_TTL without use (abandoned by their client).',
      () => c.producerLeakDetections,
    );
    counter(
      'mqgate_consumer_leak_detections_total',
      'Consumer sessions closed after CONSUMER_CLEANUP_TIMEOUT without a stream (abandoned by their client).',
      () => c.consumerLeakDetections,
    );
    counter(
      'mqgate_producers_reopened_total',
      'Broker producers reopened on send after an idle close.',
      () => c.producersReopened,
    );
    counter(
      'mqgate_streams_stalled_total',
      'Streams ended because their client read nothing for STREAM_STALL_TIMEOUT.',
      () => c.streamsStalled,
    );
    new Counter({
      name: 'mqgate_refusals_total',
      help: 'Calls and connections refused, by reason: auth, ownership, permission, quota.',
      labelNames: ['reason'],
      registers: [r],
      collect() {
        this.reset();
        const counts = sources.refusals();
        for (const reason of REFUSAL_REASONS) this.inc({ reason }, counts[reason]);
      },
    });
    const brokerCounter = (
      name: string,
      help: string,
      field: keyof BrokerCounters,
      kind: 'counter' | 'gauge',
      options: { scale?: number; zeroWhenAbsent?: boolean } = {},
    ): void => {
      const collect = function (this: Counter<'broker'> | Gauge<'broker'>): void {
        this.reset();
        for (const b of sources.brokers()) {
          const raw = b.counters[field] ?? (options.zeroWhenAbsent ? 0 : undefined);
          if (raw === undefined) continue;
          const v = raw * (options.scale ?? 1);
          if (this instanceof Counter) this.inc({ broker: b.broker }, v);
          else this.set({ broker: b.broker }, v);
        }
      };
      if (kind === 'counter') new Counter({ name, help, labelNames: ['broker'], registers: [r], collect });
      else new Gauge({ name, help, labelNames: ['broker'], registers: [r], collect });
    };
    brokerCounter(
      'mqgate_broker_groups_expired_total',
      'Consumer groups the embedded broker forgot after groupRetention without a subscription.',
      'groupsExpired',
      'counter',
    );
    brokerCounter(
      'mqgate_broker_backlog_dropped_total',
      'Retained messages no consumer group owed, dropped by the embedded broker to make room.',
      'backlogDropped',
      'counter',
    );
    brokerCounter(
      'mqgate_broker_retained_bytes',
      'Bytes of messages the embedded broker holds.',
      'retainedBytes',
      'gauge',
    );
    // The holding mechanism (delayed and transactional messages on Kafka and NATS); 0 on brokers
    // that hold messages themselves, so every broker has a sample.
    const holding = { zeroWhenAbsent: true };
    brokerCounter(
      'mqgate_broker_held_delayed_total',
      'Delayed messages this gateway wrote to the holding topics of the broker (Kafka, NATS).',
      'heldDelay',
      'counter',
      holding,
    );
    brokerCounter(
      'mqgate_broker_held_transactions_total',
      'Prepared transactions this gateway wrote to the holding topics of the broker (Kafka, NATS).',
      'heldTransaction',
      'counter',
      holding,
    );
    brokerCounter(
      'mqgate_broker_holding_moves_total',
      "Held messages this gateway's mover published to their topic when due or committed.",
      'holdingMoves',
      'counter',
      holding,
    );
    brokerCounter(
      'mqgate_broker_holding_duplicates_total',
      'Held messages moved twice (publish done, ack lost): duplicates, never losses.',
      'holdingDuplicates',
      'counter',
      holding,
    );
    brokerCounter(
      'mqgate_broker_holding_lateness_seconds_total',
      'Sum of how late held messages were published after their due time; divide by the moves.',
      'holdingLatenessSumMs',
      'counter',
      { ...holding, scale: 1 / 1000 },
    );
    new Gauge({
      name: 'mqgate_broker_up',
      help: "1 when the broker answered the gateway's shared health probe (at most one a second) OK in time, else 0.",
      labelNames: ['broker'],
      registers: [r],
      async collect() {
        this.reset();
        for (const b of (await sources.brokerHealth?.()) ?? []) this.set({ broker: b.broker }, b.ok ? 1 : 0);
      },
    });
    gauge('mqgate_connections', 'Open client connections on the gRPC port.', () => this.#live().connections);
    gauge('mqgate_broker_producers', 'Open broker producers.', () => this.#live().brokerProducers);
    gauge('mqgate_producer_handles', 'Live producer handles.', () => this.#live().producerHandles);
    gauge('mqgate_consumer_sessions', 'Live consumer sessions.', () => this.#live().sessions);
    gauge(
      'mqgate_streams',
      'Consumer streams (ReceiveMessages and Subscribe) attached to sessions.',
      () => this.#live().streams,
    );
    gauge('mqgate_publish_streams', 'Open Publish streams.', () => this.#live().publishStreams);
    gauge(
      'mqgate_inflight_deliveries',
      'Deliveries written to streams and not yet acked.',
      () => this.#live().inFlight,
    );
    gauge(
      'mqgate_pending_transactions',
      'Half messages awaiting commit or rollback.',
      () => this.#live().pendingTransactions,
    );
    gauge('process_resident_memory_bytes', 'Resident set size.', () => process.memoryUsage.rss());
    gauge('nodejs_heap_used_bytes', 'V8 heap in use.', () => process.memoryUsage().heapUsed);
    new Gauge({
      name: 'nodejs_active_resources',
      help: 'Active libuv resources keeping the event loop alive, by type.',
      labelNames: ['type'],
      registers: [r],
      collect() {
        this.reset();
        for (const [type, n] of activeResources()) this.set({ type }, n);
      },
    });
    const delay = (): { p50: number; p99: number; max: number } => this.eventLoopDelayMs();
    new Gauge({
      name: 'nodejs_eventloop_delay_seconds',
      help: 'Event-loop delay percentiles since start (how late the loop ran, sampling interval excluded).',
      labelNames: ['quantile'],
      registers: [r],
      collect() {
        const d = delay();
        this.set({ quantile: '0.5' }, d.p50 / 1000);
        this.set({ quantile: '0.99' }, d.p99 / 1000);
        this.set({ quantile: '1' }, d.max / 1000);
      },
    });
    const rpcCounts = this.#rpcCounts;
    new Counter({
      name: 'mqgate_rpc_requests_total',
      help: 'gRPC calls by method and status code.',
      labelNames: ['method', 'code'],
      registers: [r],
      collect() {
        this.reset();
        for (const [k, n] of rpcCounts) {
          const [method, code] = k.split('|') as [string, string];
          this.inc({ method, code }, n);
        }
      },
    });
    this.#rpcDuration = new Histogram({
      name: 'mqgate_rpc_duration_seconds',
      help: 'gRPC unary call latency by method.',
      labelNames: ['method'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5],
      registers: [r],
    });
  }

  start(): void {
    this.#eld ??= monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
    this.#eld.enable();
  }

  stop(): void {
    this.#eld?.disable();
  }

  /**
   * Event-loop delay in ms. The monitor records the time between its samples, which is the
   * sampling interval plus the delay; the interval is taken off, so an idle loop reads 0, not 10.
   */
  eventLoopDelayMs(): { p50: number; p99: number; max: number } {
    const h = this.#eld;
    if (!h || h.count === 0) return { p50: 0, p99: 0, max: 0 };
    const ms = (ns: number): number => Math.round(Math.max(0, ns / 1e6 - ELD_RESOLUTION_MS) * 1000) / 1000;
    return { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max) };
  }

  /** Records one finished call; `code` is the gRPC status name. */
  rpc(method: string, code: string, seconds: number): void {
    const k = `${method}|${code}`;
    this.#rpcCounts.set(k, (this.#rpcCounts.get(k) ?? 0) + 1);
    this.#rpcTotal++;
    if (code !== 'OK') this.#rpcFailed++;
    if (seconds >= 0) {
      this.#rpcSeconds += seconds;
      let child = this.#durationByMethod.get(method);
      if (!child) {
        child = this.#rpcDuration.labels({ method });
        this.#durationByMethod.set(method, child);
      }
      child.observe(seconds);
    }
  }

  /** The JSON shape existing dashboards read (plus newer fields), for `curl .../metrics | jq .`. */
  json(): Record<string, unknown> {
    const live = this.#live();
    const mem = process.memoryUsage();
    const c = this.counts;
    return {
      active_producers: live.brokerProducers,
      producer_handles: live.producerHandles,
      active_consumers: live.sessions,
      active_streams: live.streams,
      publish_streams: live.publishStreams,
      inflight_deliveries: live.inFlight,
      pending_transactions: live.pendingTransactions,
      messages_sent: c.messagesSent,
      messages_delivered: c.messagesDelivered,
      messages_acked: c.messagesAcked,
      messages_nacked: c.messagesNacked,
      messages_redelivered: c.messagesRedelivered,
      channel_full_events: c.channelFullEvents,
      producer_leak_detections: c.producerLeakDetections,
      consumer_leak_detections: c.consumerLeakDetections,
      producers_reopened: c.producersReopened,
      transactions_committed: c.transactionsCommitted,
      transactions_rolled_back: c.transactionsRolledBack,
      transactions_auto_committed: c.transactionsAutoCommitted,
      streams_stalled: c.streamsStalled,
      connections: live.connections,
      refusals: { ...this.#sources.refusals() },
      total_requests: this.#rpcTotal,
      failed_requests: this.#rpcFailed,
      // The mean over every call, not the last call's time, which says nothing about a load.
      avg_response_time_ms:
        this.#rpcTotal === 0 ? 0 : Math.round((this.#rpcSeconds / this.#rpcTotal) * 1e6) / 1000,
      active_handles: Object.fromEntries(activeResources()),
      heap_used_bytes: mem.heapUsed,
      rss_bytes: mem.rss,
      event_loop_delay_ms: this.eventLoopDelayMs(),
      uptime_seconds: (Date.now() - this.#started) / 1000,
    };
  }
}

function activeResources(): Map<string, number> {
  const m = new Map<string, number>();
  for (const t of process.getActiveResourcesInfo()) m.set(t, (m.get(t) ?? 0) + 1);
  return m;
}
