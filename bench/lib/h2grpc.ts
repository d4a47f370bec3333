/**
 * A minimal gRPC client on node:http2 for load generation. grpc-js's client spends about twice
 * the CPU per call that the gateway does, so on a 2-core machine it, not the gateway, would set
 * the throughput. This one sends pre-encoded length-prefixed frames and checks grpc-status; the
 * protobuf (de)serializers come from the same proto-loader definition real clients use.
 */
import { type ClientHttp2Session, connect, constants } from 'node:http2';
import { loadSync, type MethodDefinition } from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from './load.js';

const SERVICE = 'rocketmq.RocketMQProxy';

type Method = MethodDefinition<object, object>;

let methods: Record<string, Method> | undefined;

function method(name: string): Method {
  if (!methods) {
    const def = loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS);
    methods = def[SERVICE] as unknown as Record<string, Method>;
  }
  const m = methods[name];
  if (!m) throw new Error(`${SERVICE} has no method ${name}`);
  return m;
}

/** A request encoded once: the 5-byte gRPC prefix plus the protobuf bytes. */
export function encodeRequest(name: string, request: object): Buffer {
  const body = method(name).requestSerialize(request);
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame[0] = 0;
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  return frame;
}

export function decodeResponse<T>(name: string, body: Buffer): T {
  return method(name).responseDeserialize(body) as T;
}

export class GrpcStatusError extends Error {
  constructor(
    readonly code: number,
    detail: string,
  ) {
    super(`gRPC status ${code}: ${detail}`);
  }
}

const HEADERS_BASE = {
  [constants.HTTP2_HEADER_METHOD]: 'POST',
  'content-type': 'application/grpc',
  te: 'trailers',
};

/** Splits a DATA byte stream into gRPC messages. */
class FrameReader {
  #buf: Buffer = Buffer.alloc(0);
  push(chunk: Buffer, onMessage: (body: Buffer) => void): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    while (this.#buf.length >= 5) {
      const len = this.#buf.readUInt32BE(1);
      if (this.#buf.length < 5 + len) return;
      onMessage(this.#buf.subarray(5, 5 + len));
      this.#buf = this.#buf.subarray(5 + len);
    }
  }
}

function statusOf(headers: Record<string, unknown>): [number, string] | undefined {
  const s = headers['grpc-status'];
  if (s === undefined) return undefined;
  return [Number(s), decodeURIComponent(String(headers['grpc-message'] ?? ''))];
}

export interface ServerStream {
  cancel(): void;
  /** Resolves when the stream ended (status OK or cancelled), rejects on another status. */
  readonly done: Promise<void>;
}

export class H2GrpcClient {
  readonly #session: ClientHttp2Session;
  readonly #headers: Record<string, string>;
  #closed = false;

  /** `headers` go on every request (e.g. authorization). */
  constructor(port: number, headers: Record<string, string> = {}) {
    this.#headers = headers;
    this.#session = connect(`http://127.0.0.1:${port}`);
    this.#session.on('error', (err) => {
      // Kept for the next call's error; an idle session error must not crash the bench.
      this.#sessionError ??= err;
    });
    this.#session.on('goaway', (code: number) => {
      // ENHANCE_YOUR_CALM (11) is Node's rapid-reset guard: too many client RST_STREAMs too fast.
      this.#sessionError ??= new Error(`server sent GOAWAY with code ${code}`);
    });
  }

  #sessionError: Error | undefined;

  #check(name: string): void {
    if (this.#session.destroyed || this.#session.closed) {
      throw new Error(
        `${name}: the HTTP/2 session is gone${this.#sessionError ? `: ${this.#sessionError.message}` : ''}`,
      );
    }
  }

  /** Sends a pre-encoded frame; resolves with the response message bytes. */
  unary(name: string, frame: Buffer): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.#check(name);
      const req = this.#session.request({
        ...HEADERS_BASE,
        ...this.#headers,
        [constants.HTTP2_HEADER_PATH]: `/${SERVICE}/${name}`,
      });
      let body: Buffer | undefined;
      let status: [number, string] | undefined;
      const reader = new FrameReader();
      req.on('response', (h) => {
        status ??= statusOf(h as Record<string, unknown>);
      });
      req.on('trailers', (h) => {
        status ??= statusOf(h as Record<string, unknown>);
      });
      req.on('data', (chunk: Buffer) =>
        reader.push(chunk, (m) => {
          body = m;
        }),
      );
      req.on('error', reject);
      req.on('close', () => {
        if (!status) reject(new Error(`${name}: stream closed without grpc-status (rst ${req.rstCode})`));
        else if (status[0] !== 0) reject(new GrpcStatusError(status[0], status[1]));
        else resolve(body ?? Buffer.alloc(0));
      });
      req.end(frame);
    });
  }

  /** Opens a server-streaming call; each message's bytes go to onMessage. */
  serverStream(name: string, frame: Buffer, onMessage: (body: Buffer) => void): ServerStream {
    this.#check(name);
    const req = this.#session.request({
      ...HEADERS_BASE,
      ...this.#headers,
      [constants.HTTP2_HEADER_PATH]: `/${SERVICE}/${name}`,
    });
    const reader = new FrameReader();
    let status: [number, string] | undefined;
    let cancelled = false;
    req.on('response', (h) => {
      status ??= statusOf(h as Record<string, unknown>);
    });
    req.on('trailers', (h) => {
      status ??= statusOf(h as Record<string, unknown>);
    });
    req.on('data', (chunk: Buffer) => reader.push(chunk, onMessage));
    const done = new Promise<void>((resolve, reject) => {
      req.on('error', (err) => (cancelled ? resolve() : reject(err)));
      req.on('close', () => {
        if (cancelled || (status && status[0] === 0)) resolve();
        else if (status) reject(new GrpcStatusError(status[0], status[1]));
        else reject(new Error(`${name}: stream closed without grpc-status`));
      });
    });
    req.end(frame);
    return {
      cancel: () => {
        cancelled = true;
        req.close(constants.NGHTTP2_CANCEL);
      },
      done,
    };
  }

  /**
   * Opens a server-streaming call and never reads it: the stream is paused, so the client's
   * flow-control window fills and the server can write nothing more (a stuck or hostile client).
   * Resolves with a function that reports whether the server has ended the stream.
   */
  neverReadingStream(name: string, frame: Buffer): { closed: () => boolean } {
    this.#check(name);
    const req = this.#session.request({
      ...HEADERS_BASE,
      ...this.#headers,
      [constants.HTTP2_HEADER_PATH]: `/${SERVICE}/${name}`,
    });
    let closed = false;
    req.on('error', () => {});
    req.on('close', () => {
      closed = true;
    });
    req.end(frame);
    req.pause();
    return { closed: () => closed || this.#session.destroyed };
  }

  /** Closes gracefully; streams still open after `graceMs` are destroyed with the session. */
  close(graceMs = 2000): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    const session = this.#session;
    return new Promise((resolve) => {
      const timer = setTimeout(() => session.destroy(), graceMs);
      session.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      session.close();
    });
  }
}
