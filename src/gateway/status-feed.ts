import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { withTimeout } from '../core/lifecycle.js';
import type { Audit } from './audit.js';
import type { Authenticator } from './auth.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import type { BrokerRouter } from './routing.js';
import { STATUS_PAGE_CSP, STATUS_PAGE_HTML } from './status-page.js';

/**
 * The live status page: GET /status (the HTML) and GET /status/events (server-sent events, one
 * snapshot a second) on the HTTP port.
 *
 * What it shows is counts and names only: principal names (never a token, an access key or a
 * secret), brokers by kind and index (never a URL). With auth on, both need what the gRPC port
 * needs, a bearer token: `Authorization: Bearer <token>`, or, for a browser, `/status?token=<token>`
 * once, which answers with an HttpOnly SameSite=Strict cookie (signed by a key this process drew
 * at random, so it names the principal without holding the token, and a restart voids it) and a
 * redirect to /status without the token. Anything else is 401 and says nothing about the gateway.
 *
 * Bounded: at most `maxClients` event streams; one timer for all of them, unref'd, running only
 * while one is open; a client that does not read is dropped once its unsent bytes pass
 * `maxPendingBytes` instead of growing the gateway's memory.
 */

export const STATUS_COOKIE = 'mqgate_status';
const COOKIE_TTL_SECONDS = 12 * 3600;
/** Callers listed in a snapshot; the rest are counted. */
const MAX_CALLERS = 50;
/** How long a scrape or a snapshot waits for the broker health probe before reading it as down. */
export const BROKER_PROBE_TIMEOUT_MS = 2000;

export interface BrokerUp {
  readonly broker: string;
  readonly ok: boolean;
}

/**
 * Each configured broker (kind#index) and whether the router's shared health probe (one a second
 * at most) answered OK; a probe that has not answered within `timeoutMs` reads as down, so a hung
 * broker never holds up a Prometheus scrape.
 */
export async function brokersUp(
  router: BrokerRouter | undefined,
  timeoutMs = BROKER_PROBE_TIMEOUT_MS,
): Promise<BrokerUp[]> {
  if (!router || router.refs.length === 0) return [];
  // A broker that does not answer in time is shown down; the probe itself runs on in the
  // background and its result is dropped.
  const health = await withTimeout(router.health(), timeoutMs, 'broker health probe').catch(() => undefined);
  return router.refs.map((r, i) => ({
    broker: `${r.broker.kind}#${r.index}`,
    ok: health?.[i]?.ok === true,
  }));
}

export interface CallerStatus {
  /** The principal's name; '' when auth is off (every caller is the one anonymous principal). */
  readonly principal: string;
  readonly sessions: number;
  readonly streams: number;
  readonly in_flight: number;
  readonly producer_handles: number;
}

export interface StatusSnapshot {
  readonly time: number;
  readonly uptime_seconds: number;
  readonly auth: boolean;
  readonly closing: boolean;
  readonly brokers: readonly BrokerUp[];
  readonly totals: Record<
    | 'producer_handles'
    | 'broker_producers'
    | 'sessions'
    | 'streams'
    | 'publish_streams'
    | 'in_flight'
    | 'connections'
    | 'pending_transactions',
    number
  >;
  readonly counters: Record<(typeof COUNTERS)[number], number>;
  readonly refusals: Record<string, number>;
  readonly callers: readonly CallerStatus[];
  readonly callers_omitted: number;
  readonly process: {
    readonly event_loop_delay_ms: { p50: number; p99: number; max: number };
    readonly heap_used_bytes: number;
    readonly rss_bytes: number;
  };
}

const COUNTERS = [
  'messages_sent',
  'messages_delivered',
  'messages_acked',
  'messages_nacked',
  'messages_redelivered',
  'channel_full_events',
  'streams_stalled',
  'producer_leak_detections',
  'consumer_leak_detections',
  'total_requests',
  'failed_requests',
] as const;

export interface StatusSources {
  readonly metrics: GatewayMetrics;
  readonly authEnabled: boolean;
  sessionsByOwner(): ReadonlyMap<string, { sessions: number; streams: number; inFlight: number }>;
  handlesByOwner(): ReadonlyMap<string, number>;
  brokers(): Promise<readonly BrokerUp[]>;
  closing(): boolean;
}

/** One snapshot of what the page shows. */
export async function statusSnapshot(src: StatusSources): Promise<StatusSnapshot> {
  const brokers = await src.brokers();
  const m = src.metrics.json();
  const n = (key: string): number => {
    const v = m[key];
    return typeof v === 'number' ? v : 0;
  };
  const byOwner = new Map<
    string,
    { sessions: number; streams: number; in_flight: number; producer_handles: number }
  >();
  const entry = (owner: string) => {
    let e = byOwner.get(owner);
    if (!e) {
      e = { sessions: 0, streams: 0, in_flight: 0, producer_handles: 0 };
      byOwner.set(owner, e);
    }
    return e;
  };
  for (const [owner, s] of src.sessionsByOwner()) {
    const e = entry(owner);
    e.sessions = s.sessions;
    e.streams = s.streams;
    e.in_flight = s.inFlight;
  }
  for (const [owner, h] of src.handlesByOwner()) entry(owner).producer_handles = h;
  const callers = [...byOwner]
    .map(([principal, e]) => ({ principal, ...e }))
    .sort(
      (a, b) =>
        b.sessions + b.producer_handles - (a.sessions + a.producer_handles) ||
        (a.principal < b.principal ? -1 : 1),
    );
  const eld = m.event_loop_delay_ms as { p50: number; p99: number; max: number };
  return {
    time: Date.now(),
    uptime_seconds: Math.round(n('uptime_seconds')),
    auth: src.authEnabled,
    closing: src.closing(),
    brokers,
    totals: {
      producer_handles: n('producer_handles'),
      broker_producers: n('active_producers'),
      sessions: n('active_consumers'),
      streams: n('active_streams'),
      publish_streams: n('publish_streams'),
      in_flight: n('inflight_deliveries'),
      connections: n('connections'),
      pending_transactions: n('pending_transactions'),
    },
    counters: Object.fromEntries(COUNTERS.map((k) => [k, n(k)])) as StatusSnapshot['counters'],
    refusals: { ...(m.refusals as Record<string, number>) },
    callers: callers.slice(0, MAX_CALLERS),
    callers_omitted: Math.max(0, callers.length - MAX_CALLERS),
    process: { event_loop_delay_ms: eld, heap_used_bytes: n('heap_used_bytes'), rss_bytes: n('rss_bytes') },
  };
}

function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** Who may see the page: the gRPC port's bearer tokens, and a signed cookie for browsers. */
export class StatusAccess {
  readonly #auth: Authenticator;
  readonly #key = randomBytes(32);
  readonly #now: () => number;

  constructor(auth: Authenticator, now: () => number = Date.now) {
    this.#auth = auth;
    this.#now = now;
  }

  get enabled(): boolean {
    return this.#auth.enabled;
  }

  /** The principal a token proves, or undefined. */
  login(token: string): string | undefined {
    try {
      return this.#auth.authenticate(`Bearer ${token}`).name;
    } catch {
      return undefined;
    }
  }

  /**
   * The principal the request proves ('' with auth off), or undefined. An Authorization header,
   * when present, decides alone; otherwise the cookie.
   */
  check(req: IncomingMessage): string | undefined {
    if (!this.#auth.enabled) return '';
    const header = req.headers.authorization;
    if (header !== undefined) {
      try {
        return this.#auth.authenticate(header).name;
      } catch {
        return undefined;
      }
    }
    const cookie = readCookie(req.headers.cookie, STATUS_COOKIE);
    return cookie === undefined ? undefined : this.#verify(cookie);
  }

  /** The Set-Cookie value for a principal that logged in with its token. */
  cookie(principal: string): string {
    const expires = Math.floor(this.#now() / 1000) + COOKIE_TTL_SECONDS;
    const body = `v1.${Buffer.from(principal).toString('base64url')}.${expires}`;
    return `${STATUS_COOKIE}=${body}.${this.#sign(body)}; Max-Age=${COOKIE_TTL_SECONDS}; HttpOnly; SameSite=Strict`;
  }

  #sign(body: string): string {
    return createHmac('sha256', this.#key).update(body).digest('base64url');
  }

  #verify(value: string): string | undefined {
    const parts = value.split('.');
    if (parts.length !== 4 || parts[0] !== 'v1') return undefined;
    const body = parts.slice(0, 3).join('.');
    const given = Buffer.from(parts[3] as string, 'base64url');
    const expected = Buffer.from(this.#sign(body), 'base64url');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
    if (Number(parts[2]) * 1000 < this.#now()) return undefined;
    return Buffer.from(parts[1] as string, 'base64url').toString();
  }
}

export interface StatusFeedOptions {
  snapshot(): Promise<unknown>;
  log: Logger;
  intervalMs?: number;
  maxClients?: number;
  /** Unsent bytes a client may have queued before it is dropped. */
  maxPendingBytes?: number;
}

/** The server-sent events of /status/events: one timer and one JSON encoding for every client. */
export class StatusFeed {
  readonly #clients = new Set<ServerResponse>();
  readonly #opts: Required<Omit<StatusFeedOptions, 'log' | 'snapshot'>> & StatusFeedOptions;
  #timer: NodeJS.Timeout | undefined;
  #ticking = false;
  #closed = false;
  #dropped = 0;

  constructor(options: StatusFeedOptions) {
    this.#opts = { intervalMs: 1000, maxClients: 16, maxPendingBytes: 64 * 1024, ...options };
  }

  /** Event streams open now. */
  get clients(): number {
    return this.#clients.size;
  }

  /** Whether the feed's one timer is running (only while a client is connected). */
  get timerActive(): boolean {
    return this.#timer !== undefined;
  }

  /** Clients dropped because they did not read what was sent. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Answers an authorized GET /status/events: the stream, or 503 when full or closing. */
  async attach(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.#closed || this.#clients.size >= this.#opts.maxClients) {
      const body = this.#closed
        ? 'the gateway is shutting down\n'
        : `too many status event streams (${this.#opts.maxClients}); retry later\n`;
      res.writeHead(503, {
        'content-type': 'text/plain; charset=utf-8',
        'content-length': Buffer.byteLength(body),
        'retry-after': '5',
      });
      res.end(body);
      return;
    }
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'x-accel-buffering': 'no',
    });
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    this.#clients.add(res);
    res.once('close', () => this.#remove(res));
    this.#timer ??= setInterval(() => void this.#tick(), this.#opts.intervalMs).unref();
    // The first snapshot now, not a second later.
    const frame = await this.#frame();
    if (frame !== undefined && this.#clients.has(res)) this.#write(res, `retry: 2000\n${frame}`);
  }

  async #frame(): Promise<string | undefined> {
    try {
      return `data: ${JSON.stringify(await this.#opts.snapshot())}\n\n`;
    } catch (err) {
      this.#opts.log.warn({ err }, 'status snapshot failed');
      return undefined;
    }
  }

  async #tick(): Promise<void> {
    if (this.#ticking || this.#clients.size === 0) return;
    this.#ticking = true;
    try {
      const frame = await this.#frame();
      if (frame !== undefined) for (const res of [...this.#clients]) this.#write(res, frame);
    } finally {
      this.#ticking = false;
    }
  }

  #write(res: ServerResponse, frame: string): void {
    if (res.destroyed || res.writableEnded) {
      this.#remove(res);
      return;
    }
    if (res.writableLength > this.#opts.maxPendingBytes) {
      this.#dropped++;
      this.#opts.log.warn(
        { peer: res.socket?.remoteAddress, unsentBytes: res.writableLength },
        'status event stream dropped: its client stopped reading',
      );
      this.#remove(res);
      res.destroy();
      return;
    }
    res.write(frame);
  }

  #remove(res: ServerResponse): void {
    this.#clients.delete(res);
    if (this.#clients.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  /** Ends every stream and stops the timer; later requests get 503. */
  close(): void {
    this.#closed = true;
    for (const res of [...this.#clients]) {
      this.#remove(res);
      res.end();
    }
  }
}

export interface StatusPageOptions {
  auth: Authenticator;
  audit: Audit;
  log: Logger;
  snapshot(): Promise<StatusSnapshot>;
  maxClients?: number;
  intervalMs?: number;
}

const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': STATUS_PAGE_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-store',
};

/** /status and /status/events. */
export class StatusPage {
  readonly access: StatusAccess;
  readonly feed: StatusFeed;
  readonly #audit: Audit;

  constructor(options: StatusPageOptions) {
    this.access = new StatusAccess(options.auth);
    this.#audit = options.audit;
    this.feed = new StatusFeed({
      snapshot: options.snapshot,
      log: options.log,
      ...(options.maxClients !== undefined ? { maxClients: options.maxClients } : {}),
      ...(options.intervalMs !== undefined ? { intervalMs: options.intervalMs } : {}),
    });
  }

  /** Answers `path` if it is the page's; false when it is not. */
  async serve(req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
    if (path === '/status') {
      const token = new URL(req.url ?? '/', 'http://status.invalid').searchParams.get('token');
      if (token !== null) {
        // The token goes into a cookie once and leaves the address bar and the history.
        const principal = this.access.login(token);
        if (principal === undefined) return this.#refuse(req, res);
        res.writeHead(303, {
          location: 'status',
          'cache-control': 'no-store',
          'referrer-policy': 'no-referrer',
          'content-length': 0,
          ...(this.access.enabled ? { 'set-cookie': this.access.cookie(principal) } : {}),
        });
        res.end();
        return true;
      }
      if (this.access.check(req) === undefined) return this.#refuse(req, res);
      res.writeHead(200, { ...PAGE_HEADERS, 'content-length': Buffer.byteLength(STATUS_PAGE_HTML) });
      res.end(STATUS_PAGE_HTML);
      return true;
    }
    if (path === '/status/events') {
      if (this.access.check(req) === undefined) return this.#refuse(req, res);
      await this.feed.attach(req, res);
      return true;
    }
    return false;
  }

  #refuse(req: IncomingMessage, res: ServerResponse): true {
    this.#audit.refuse('auth', `peer ${req.socket.remoteAddress}`, 'status page without a valid token');
    const body =
      'unauthorized: the status page needs a token of the gateway (AUTH_TOKENS or AUTH_FILE): ' +
      "send 'Authorization: Bearer <token>', or open /status?token=<token> once in a browser\n";
    res.writeHead(401, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'www-authenticate': 'Bearer realm="mqgate status"',
      'cache-control': 'no-store',
    });
    res.end(body);
    return true;
  }

  close(): void {
    this.feed.close();
  }
}
