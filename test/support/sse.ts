/**
 * A server-sent events reader for the status page's /status/events: its own socket (no agent,
 * no pool), so closing it leaves nothing behind for the leak checks.
 */
import { type IncomingMessage, request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

export interface SseStream {
  readonly status: number;
  readonly headers: IncomingMessage['headers'];
  /** The body of a response that is not a stream (401, 503). */
  readonly body: string;
  /** Every `data:` frame so far, as sent. */
  readonly frames: string[];
  /** Whether the server ended the stream. */
  readonly ended: boolean;
  /** The next frame after the ones seen so far, parsed. */
  next<T = Record<string, unknown>>(timeoutMs?: number): Promise<T>;
  /** Waits for a frame (old or new) that satisfies `predicate`. */
  until<T = Record<string, unknown>>(
    predicate: (frame: T) => boolean,
    what: string,
    timeoutMs?: number,
  ): Promise<T>;
  close(): void;
}

export function openSse(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { accept: 'text/event-stream', ...headers } });
    req.once('error', reject);
    req.once('response', (res) => {
      const frames: string[] = [];
      let body = '';
      let buf = '';
      let ended = false;
      let read = 0;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        if (res.statusCode !== 200) {
          body += chunk;
          return;
        }
        buf += chunk;
        let i = buf.indexOf('\n\n');
        while (i >= 0) {
          const event = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = event
            .split('\n')
            .filter((l) => l.startsWith('data: '))
            .map((l) => l.slice(6))
            .join('\n');
          if (data !== '') frames.push(data);
          i = buf.indexOf('\n\n');
        }
      });
      const done = (): void => {
        ended = true;
      };
      res.once('end', done);
      res.once('close', done);
      res.once('error', done);
      const stream: SseStream = {
        status: res.statusCode ?? 0,
        headers: res.headers,
        get body() {
          return body;
        },
        frames,
        get ended() {
          return ended;
        },
        async next<T>(timeoutMs = 5000): Promise<T> {
          const deadline = Date.now() + timeoutMs;
          while (frames.length <= read) {
            if (ended) throw new Error('the event stream ended');
            if (Date.now() > deadline) throw new Error(`no event within ${timeoutMs} ms`);
            await sleep(10);
          }
          return JSON.parse(frames[read++] as string) as T;
        },
        async until<T>(predicate: (frame: T) => boolean, what: string, timeoutMs = 10_000): Promise<T> {
          const deadline = Date.now() + timeoutMs;
          let last: T | undefined;
          for (;;) {
            while (frames.length > read) {
              last = JSON.parse(frames[read++] as string) as T;
              if (predicate(last)) return last;
            }
            if (ended) throw new Error(`the event stream ended before ${what}`);
            if (Date.now() > deadline) {
              throw new Error(`timed out waiting for ${what}; last frame: ${JSON.stringify(last)}`);
            }
            await sleep(10);
          }
        },
        close() {
          req.destroy();
          res.destroy();
        },
      };
      if (res.statusCode !== 200) {
        res.once('end', () => resolve(stream));
      } else {
        resolve(stream);
      }
    });
    req.end();
  });
}
