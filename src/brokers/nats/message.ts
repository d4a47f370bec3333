import type { JsMsg } from '@nats-io/jetstream';
import { headers, type MsgHdrs } from '@nats-io/transport-node';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Message, OutgoingMessage } from '../../core/message.js';
import { tagFromSubject } from './names.js';

/**
 * Message fields travel as NATS headers. Values are percent-encoded (key, business key) or JSON
 * (properties) because a header value cannot hold CR/LF and property names are not always valid
 * header names.
 */
export const HEADER_KEY = 'Mq-Key';
export const HEADER_BUSINESS_KEY = 'Mq-Business-Key';
export const HEADER_PROPERTIES = 'Mq-Properties';
/** The producer's clock; Message.bornAt uses the server's store time, which is authoritative. */
export const HEADER_BORN_AT = 'Mq-Born-At';
export const HEADER_MSG_ID = 'Nats-Msg-Id';

/**
 * A property that, when present, becomes the JetStream publish de-duplication id
 * (`Nats-Msg-Id`): a retried send with the same id inside the stream's duplicate window
 * (2 minutes by default) is stored once. Without it the adapter generates one per send.
 */
export const DEDUP_ID_PROPERTY = 'Nats-Msg-Id';

/**
 * nats-server 2.9 finds its own headers (Nats-Msg-Id, Nats-Expected-*) by searching the raw
 * header block for the name, and a second occurrence anywhere (say a property value that
 * mentions "Nats-Msg-Id") makes it ignore the header: de-duplication silently stopped working.
 * So no value we write may contain "Nats-" literally; both encodings below decode it back.
 */
const SERVER_HEADER_NAME = /Nats-/g;

function uriValue(text: string): string {
  return encodeURIComponent(text).replace(SERVER_HEADER_NAME, '%4Eats-');
}

export function buildHeaders(message: OutgoingMessage, msgID: string, bornAt: number): MsgHdrs {
  const h = headers();
  h.set(HEADER_MSG_ID, msgID);
  if (message.key !== undefined && message.key !== '') h.set(HEADER_KEY, uriValue(message.key));
  if (message.businessKey !== undefined && message.businessKey !== '') {
    h.set(HEADER_BUSINESS_KEY, uriValue(message.businessKey));
  }
  const props = message.properties;
  if (props !== undefined && Object.keys(props).length > 0) {
    h.set(HEADER_PROPERTIES, JSON.stringify(props).replace(SERVER_HEADER_NAME, '\\u004eats-'));
  }
  h.set(HEADER_BORN_AT, String(bornAt));
  return h;
}

export function dedupId(message: OutgoingMessage): string | undefined {
  const id = message.properties?.[DEDUP_ID_PROPERTY];
  if (id === undefined) return undefined;
  if (typeof id !== 'string' || id === '' || /[\r\n]/.test(id)) {
    throw new InvalidArgumentError(
      `property "${DEDUP_ID_PROPERTY}" must be a non-empty single-line string (it is the JetStream de-duplication id)`,
    );
  }
  return id;
}

function header(h: MsgHdrs | undefined, name: string): string | undefined {
  if (h === undefined || !h.has(name)) return undefined;
  return h.get(name);
}

function decoded(text: string | undefined): string | undefined {
  if (text === undefined || text === '') return undefined;
  try {
    return decodeURIComponent(text);
  } catch {
    // Written by a publisher that is not mqgate: take it as is.
    return text;
  }
}

function parseProperties(text: string | undefined): Record<string, string> {
  if (text === undefined || text === '') return {};
  try {
    const value: unknown = JSON.parse(text);
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
    return out;
  } catch {
    return {};
  }
}

export function toMessage(m: JsMsg, topic: string, prefix: string): Message {
  const h = m.headers;
  const info = m.info;
  const bornAtHeader = Number(header(h, HEADER_BORN_AT));
  const stored = Math.floor(info.timestampNanos / 1e6);
  return {
    id: header(h, HEADER_MSG_ID) || `${info.stream}:${info.streamSequence}`,
    topic,
    // Copy: the client hands out views into its read buffer, which a held message would pin.
    body: m.data.slice(),
    key: decoded(header(h, HEADER_KEY)),
    tag: tagFromSubject(prefix, topic, m.subject),
    businessKey: decoded(header(h, HEADER_BUSINESS_KEY)),
    properties: parseProperties(header(h, HEADER_PROPERTIES)),
    deliverAt: undefined,
    bornAt: Number.isFinite(stored) && stored > 0 ? stored : bornAtHeader || Date.now(),
    reconsumeCount: Math.max(0, info.deliveryCount - 1),
  };
}
