import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../../core/errors.js';

/**
 * How mqgate names map onto NATS: a topic is one subject token (`<prefix>.<topic>.<tag>`), a
 * stream per topic (`<prefix>_<topic>`), a durable consumer per group. Stream and consumer names
 * are file names on the server, so they are sanitised; subjects keep the topic as written.
 */

/** Printable ASCII without the subject separators and wildcards. */
const TOPIC_PATTERN = /^[!-~]+$/;
const SUBJECT_RESERVED = /[.*>]/;
const MAX_TOPIC_LENGTH = 200;
const NAME_SAFE = /^[A-Za-z0-9_-]+$/;
/** A tag that is a safe subject token and cannot be confused with the markers below. */
const PLAIN_TAG = /^[A-Za-z0-9-][A-Za-z0-9_-]*$/;
/** Subject token for "no tag". Encoded tags start with `_` too, so no plain tag collides. */
export const NO_TAG_TOKEN = '_';

export function validateTopic(topic: string): void {
  if (
    typeof topic !== 'string' ||
    topic.length === 0 ||
    topic.length > MAX_TOPIC_LENGTH ||
    !TOPIC_PATTERN.test(topic) ||
    SUBJECT_RESERVED.test(topic)
  ) {
    throw new InvalidArgumentError(
      `topic "${String(topic)}" is not valid on NATS JetStream: a topic becomes one NATS subject token, ` +
        `so it must be 1-${MAX_TOPIC_LENGTH} printable ASCII characters without spaces, ".", "*" or ">" ` +
        '(e.g. "orders" or "orders-v1")',
    );
  }
}

export function validateGroup(group: string): void {
  if (typeof group !== 'string' || group.trim() === '') {
    throw new InvalidArgumentError('consumer group must be a non-empty string');
  }
}

function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 10);
}

/**
 * Stream and consumer names: `[A-Za-z0-9_-]` only. Anything else is replaced and a hash of the
 * original is appended, so two topics that differ only in replaced characters never share a name.
 */
export function safeName(text: string, maxLength = 64): string {
  if (NAME_SAFE.test(text) && text.length <= maxLength) return text;
  const replaced = text.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, maxLength - 11);
  return `${replaced}_${shortHash(text)}`;
}

export function streamName(prefix: string, topic: string): string {
  return `${prefix}_${safeName(topic, 200)}`;
}

export function consumerName(group: string): string {
  return safeName(group);
}

export function topicSubjects(prefix: string, topic: string): string {
  return `${prefix}.${topic}.>`;
}

/** The subject token for a tag: plain when safe, else `_` + base64url of the UTF-8 bytes. */
export function tagToken(tag: string | undefined): string {
  if (tag === undefined || tag === '') return NO_TAG_TOKEN;
  if (PLAIN_TAG.test(tag)) return tag;
  return `_${Buffer.from(tag, 'utf8').toString('base64url')}`;
}

/** Inverse of tagToken; a token written by another publisher that is not ours is taken as is. */
export function tagFromToken(token: string): string | undefined {
  if (token === NO_TAG_TOKEN || token === '') return undefined;
  if (token.startsWith('_')) {
    const decoded = Buffer.from(token.slice(1), 'base64url').toString('utf8');
    if (tagToken(decoded) === token) return decoded;
  }
  return token;
}

export function publishSubject(prefix: string, topic: string, tag: string | undefined): string {
  return `${prefix}.${topic}.${tagToken(tag)}`;
}

/** The tag of a delivered message from its subject (`<prefix>.<topic>.<token...>`). */
export function tagFromSubject(prefix: string, topic: string, subject: string): string | undefined {
  const head = `${prefix}.${topic}.`;
  if (!subject.startsWith(head)) return undefined;
  return tagFromToken(subject.slice(head.length));
}
