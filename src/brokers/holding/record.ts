import { InvalidArgumentError } from '../../core/errors.js';
import type { Message, OutgoingMessage } from '../../core/message.js';

/**
 * A message the gateway holds on the broker until a time (delay) or a decision (transaction),
 * and its encoding as an ordinary record of the same broker: the body as is, the original
 * properties as is, and the holding fields as properties under a reserved prefix. The held
 * record keeps the original key, so a broker that partitions by key keeps a key's held
 * messages in order.
 */
export type HeldKind = 'delay' | 'transaction';

export interface HeldMessage {
  /** The message id the publisher was given; the released message carries the same id. */
  readonly id: string;
  /** The topic the message is released to. */
  readonly topic: string;
  readonly kind: HeldKind;
  /** Epoch ms: released no earlier than this (a transaction's immunity deadline). */
  readonly dueAt: number;
  /** Epoch ms when this record was written to the holding storage (rewritten on every hop). */
  readonly heldAt: number;
  readonly txId: string | undefined;
  readonly body: Uint8Array | string;
  readonly key: string | undefined;
  readonly tag: string | undefined;
  readonly businessKey: string | undefined;
  readonly properties: Readonly<Record<string, string>>;
}

/** Properties under this prefix are the holding's own; a message may not carry them itself. */
export const HOLD_PREFIX = 'mqgate-hold-';
const P_ID = `${HOLD_PREFIX}id`;
const P_TOPIC = `${HOLD_PREFIX}topic`;
const P_KIND = `${HOLD_PREFIX}kind`;
const P_DUE = `${HOLD_PREFIX}due`;
const P_AT = `${HOLD_PREFIX}at`;
const P_TX = `${HOLD_PREFIX}tx`;
const P_TAG = `${HOLD_PREFIX}tag`;
const P_BKEY = `${HOLD_PREFIX}business-key`;

/** Refuses a message whose own properties use the holding's reserved prefix. */
export function checkHoldable(message: OutgoingMessage): void {
  for (const name of Object.keys(message.properties ?? {})) {
    if (name.startsWith(HOLD_PREFIX)) {
      throw new InvalidArgumentError(
        `message property "${name}" uses the prefix "${HOLD_PREFIX}", which the gateway reserves for delayed and transactional messages; rename the property`,
      );
    }
  }
}

export function encodeHeld(h: HeldMessage): OutgoingMessage {
  const properties: Record<string, string> = { ...h.properties };
  properties[P_ID] = h.id;
  properties[P_TOPIC] = h.topic;
  properties[P_KIND] = h.kind;
  properties[P_DUE] = String(h.dueAt);
  properties[P_AT] = String(h.heldAt);
  if (h.txId !== undefined) properties[P_TX] = h.txId;
  if (h.tag !== undefined) properties[P_TAG] = h.tag;
  if (h.businessKey !== undefined) properties[P_BKEY] = h.businessKey;
  return { body: h.body, key: h.key, properties };
}

/** The held message a holding record carries, or undefined when it is not one of ours. */
export function decodeHeld(m: Message): HeldMessage | undefined {
  const p = m.properties;
  const id = p[P_ID];
  const topic = p[P_TOPIC];
  const kind = p[P_KIND];
  const dueAt = Number(p[P_DUE]);
  const heldAt = Number(p[P_AT]);
  if (!id || !topic || (kind !== 'delay' && kind !== 'transaction')) return undefined;
  if (!Number.isFinite(dueAt) || !Number.isFinite(heldAt)) return undefined;
  const properties: Record<string, string> = {};
  for (const [k, v] of Object.entries(p)) if (!k.startsWith(HOLD_PREFIX)) properties[k] = v;
  return {
    id,
    topic,
    kind,
    dueAt,
    heldAt,
    txId: p[P_TX],
    body: m.body,
    key: m.key,
    tag: p[P_TAG],
    businessKey: p[P_BKEY],
    properties,
  };
}

/** The outcome of a transaction, written by EndTransaction where the backend keeps decisions. */
export type Decision = 'commit' | 'rollback';
const P_DECISION = `${HOLD_PREFIX}decision`;

export function encodeDecision(txId: string, decision: Decision): OutgoingMessage {
  return { body: '', key: txId, properties: { [P_TX]: txId, [P_DECISION]: decision } };
}

export function decodeDecision(m: Message): { txId: string; decision: Decision } | undefined {
  const txId = m.properties[P_TX];
  const decision = m.properties[P_DECISION];
  if (!txId || (decision !== 'commit' && decision !== 'rollback')) return undefined;
  return { txId, decision };
}

/** The message released to the target topic: the original fields, no holding properties. */
export function releasedMessage(h: HeldMessage): OutgoingMessage {
  return {
    body: h.body,
    key: h.key,
    tag: h.tag,
    businessKey: h.businessKey,
    properties: h.properties,
  };
}
