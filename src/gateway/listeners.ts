import {
  createServer as createHttpServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { MqError } from '../core/errors.js';
import type { Audit } from './audit.js';
import type { Logger } from './log.js';

/**
 * The sockets of both ports, owned by the gateway rather than by the libraries above them, so
 * that connections are capped, a connection that never makes a call is cut off, and a
 * connection can be cut when a stream on it has to be abandoned.
 *
 * gRPC: a plain TCP listener hands each accepted socket to grpc-js (its connection injector);
 * grpc-js closes connections idle for CONNECTION_IDLE_TIMEOUT itself, and a connection that has
 * not completed a call within HEADERS_TIMEOUT of connecting (a silent or trickling client) is
 * destroyed by sweep().
 */
export interface ListenerOptions {
  maxConnections: number;
  headersTimeoutMs: number;
  audit: Audit;
  log: Logger;
}

interface Conn {
  readonly socket: Socket;
  readonly openedAt: number;
  /** A call arrived on it: it has spoken HTTP/2 and gRPC at least once. */
  called: boolean;
}

function peerOf(socket: Socket): string {
  return `${socket.remoteAddress}:${socket.remotePort}`;
}

export class GrpcListener {
  readonly #server: Server;
  readonly #conns = new Map<string, Conn>();
  readonly #opts: ListenerOptions;

  constructor(inject: (socket: Socket) => void, options: ListenerOptions) {
    this.#opts = options;
    this.#server = createServer({ noDelay: true }, (socket) => {
      const peer = peerOf(socket);
      const conn: Conn = { socket, openedAt: Date.now(), called: false };
      this.#conns.set(peer, conn);
      socket.once('close', () => {
        if (this.#conns.get(peer) === conn) this.#conns.delete(peer);
      });
      inject(socket);
    });
    this.#server.maxConnections = options.maxConnections;
    this.#server.on('drop', (data?: { remoteAddress?: string }) => {
      options.audit.refuse('quota', `peer ${data?.remoteAddress ?? 'unknown'}`, 'MAX_CONNECTIONS');
    });
  }

  get count(): number {
    return this.#conns.size;
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void =>
        reject(
          new MqError('UNAVAILABLE', `cannot listen on gRPC ${host}:${port}: ${err.message}`, { cause: err }),
        );
      this.#server.once('error', onError);
      this.#server.listen(port, host, () => {
        this.#server.off('error', onError);
        resolve((this.#server.address() as AddressInfo).port);
      });
    });
  }

  /** A call arrived from `peer` (grpc-js's "address:port" of the connection). */
  onCall(peer: string): void {
    const conn = this.#conns.get(peer);
    if (conn) conn.called = true;
  }

  /** Bytes written so far on the connection a call came from (0 when it is gone). */
  bytesWritten(peer: string): number {
    return this.#conns.get(peer)?.socket.bytesWritten ?? 0;
  }

  /** Destroys the connection a call came from. */
  cut(peer: string): void {
    const conn = this.#conns.get(peer);
    if (!conn) return;
    this.#opts.log.warn({ peer }, 'connection cut: a stream on it stopped reading and could not be ended');
    conn.socket.destroy();
  }

  /** Cuts connections that have made no call within HEADERS_TIMEOUT of opening. */
  sweep(now: number): void {
    for (const [peer, conn] of this.#conns) {
      if (conn.called || now - conn.openedAt < this.#opts.headersTimeoutMs) continue;
      this.#opts.audit.refuse('quota', `peer ${conn.socket.remoteAddress}`, 'HEADERS_TIMEOUT');
      this.#conns.delete(peer);
      conn.socket.destroy();
    }
  }

  #closed: Promise<void> | undefined;

  /** Stops accepting connections; open ones stay until grpc-js's shutdown or close() ends them. */
  stopAccepting(): void {
    this.#closed ??= new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** Destroys whatever connections remain and resolves when the listener is fully closed. */
  async close(): Promise<void> {
    this.stopAccepting();
    for (const conn of this.#conns.values()) conn.socket.destroy();
    this.#conns.clear();
    await this.#closed;
  }
}

export interface HttpListenerOptions {
  maxConnections: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
}

/** The HTTP server of /metrics, /health, /ready with the same caps and timeouts. */
export function createHttpListener(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  options: HttpListenerOptions,
): HttpServer {
  const server = createHttpServer(
    {
      headersTimeout: options.headersTimeoutMs,
      requestTimeout: Math.max(options.headersTimeoutMs, 30_000),
      keepAliveTimeout: 5_000,
      // How often Node checks the two timeouts above; the default (30 s) lets a silent
      // connection live three times longer than HEADERS_TIMEOUT.
      connectionsCheckingInterval: Math.max(250, Math.min(5_000, options.headersTimeoutMs / 4)),
    },
    handler,
  );
  server.maxConnections = options.maxConnections;
  // Inactivity on an open connection (no request at all, or an idle keep-alive one).
  server.timeout = options.idleTimeoutMs;
  return server;
}
