/**
 * Just enough of RocketMQ's remoting protocol to ask the name server two questions (is our
 * cluster registered, does a topic have a route) without starting a JVM for mqadmin.
 *
 * Frame: int32 length of the rest, int32 (serialize type << 24 | header length), JSON header,
 * body. A response has bit 0 of `flag` set and a `code` (0 = success).
 */
import { connect } from 'node:net';
import { BrokerScriptError } from './common.js';

export const RequestCode = {
  GET_ROUTEINFO_BY_TOPIC: 105,
  GET_BROKER_CLUSTER_INFO: 106,
} as const;
export const ResponseCode = { SUCCESS: 0, TOPIC_NOT_EXIST: 17 } as const;

export interface RemotingResponse {
  code: number;
  remark: string | undefined;
  /** The body as text. The name server writes it with fastjson, which is not always valid JSON. */
  body: string;
}

function encode(code: number, opaque: number, extFields: Record<string, string>): Buffer {
  const header = Buffer.from(
    JSON.stringify({
      code,
      language: 'JAVA',
      version: 0,
      opaque,
      flag: 0,
      extFields,
      serializeTypeCurrentRPC: 'JSON',
    }),
  );
  const frame = Buffer.alloc(8 + header.length);
  frame.writeInt32BE(4 + header.length, 0);
  frame.writeInt32BE(header.length, 4);
  header.copy(frame, 8);
  return frame;
}

/** One request on a fresh connection, bounded by `timeoutMs`; the socket is always destroyed. */
export function remotingRequest(
  address: string,
  code: number,
  extFields: Record<string, string> = {},
  timeoutMs = 3_000,
): Promise<RemotingResponse> {
  const [host, portText] = address.split(':');
  return new Promise((resolve, reject) => {
    const socket = connect({ host: host ?? '127.0.0.1', port: Number(portText) });
    let buffered = Buffer.alloc(0);
    const finish = (err: Error | undefined, value?: RemotingResponse): void => {
      socket.removeAllListeners();
      socket.destroy();
      if (err) reject(err);
      else resolve(value as RemotingResponse);
    };
    socket.setTimeout(timeoutMs, () =>
      finish(new BrokerScriptError(`name server ${address} did not answer in ${timeoutMs} ms`)),
    );
    socket.once('error', (err) =>
      finish(new BrokerScriptError(`name server ${address}: ${err.message}`, { cause: err })),
    );
    socket.once('close', () => finish(new BrokerScriptError(`name server ${address} closed the connection`)));
    socket.on('data', (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      if (buffered.length < 4) return;
      const length = buffered.readInt32BE(0);
      if (buffered.length < 4 + length) return;
      const headerLength = buffered.readInt32BE(4) & 0xffffff;
      try {
        const header = JSON.parse(buffered.subarray(8, 8 + headerLength).toString('utf8')) as {
          code?: number;
          remark?: string;
        };
        finish(undefined, {
          code: header.code ?? -1,
          remark: header.remark,
          body: buffered.subarray(8 + headerLength, 4 + length).toString('utf8'),
        });
      } catch (err) {
        finish(new BrokerScriptError(`name server ${address} sent an unreadable header`, { cause: err }));
      }
    });
    socket.once('connect', () => socket.write(encode(code, 1, extFields)));
  });
}

/** True when the name server lists `brokerName` under `cluster`. */
export async function clusterRegistered(
  namesrv: string,
  cluster: string,
  brokerName: string,
): Promise<boolean> {
  const r = await remotingRequest(namesrv, RequestCode.GET_BROKER_CLUSTER_INFO);
  if (r.code !== ResponseCode.SUCCESS) return false;
  const m = new RegExp(`"${cluster}":\\[([^\\]]*)\\]`).exec(r.body);
  return m?.[1]?.includes(`"${brokerName}"`) ?? false;
}

/** True when the name server has a route for `topic`. */
export async function topicRouted(namesrv: string, topic: string): Promise<boolean> {
  const r = await remotingRequest(namesrv, RequestCode.GET_ROUTEINFO_BY_TOPIC, { topic });
  if (r.code === ResponseCode.SUCCESS) return true;
  if (r.code === ResponseCode.TOPIC_NOT_EXIST) return false;
  throw new BrokerScriptError(
    `name server answered code ${r.code} (${r.remark ?? ''}) for the route of ${topic}`,
  );
}
