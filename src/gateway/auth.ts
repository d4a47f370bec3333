import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { InvalidArgumentError, MqError, quoteInput } from '../core/errors.js';

/**
 * Who may call, and on which topics and groups.
 *
 * A principal is what a bearer token proves. AUTH_TOKENS entries may do everything (publish,
 * consume, any group) except touch reserved names; an AUTH_FILE gives each principal glob
 * patterns per action. With no token configured at all, auth is off and every caller is the one
 * anonymous principal: ids are then the only capability, which is why every id is random.
 */

export type Action = 'publish' | 'consume' | 'group';

const ACTION_WORDS: Record<Action, string> = {
  publish: 'publish to topic',
  consume: 'consume topic',
  group: 'use consumer group',
};

export interface Principal {
  /** '' for the anonymous principal of a gateway without auth. */
  readonly name: string;
  /** Whether this principal may do `action` on the topic or group `name`. */
  may(action: Action, name: string): boolean;
  /** Throws PERMISSION_DENIED naming the principal and the resource unless `may` allows it. */
  check(action: Action, name: string): void;
}

/**
 * Names brokers keep for themselves: RocketMQ's %DLQ%/%RETRY%/%SYS% topics and its system
 * topics, Kafka's __consumer_offsets and friends (and mqgate's own internal names, which also
 * start with "__"). Reading a dead-letter topic shows other groups' failed messages, so these
 * need a grant that names them explicitly; a pattern like "*" never covers them.
 */
const RESERVED: ReadonlyArray<[RegExp, string]> = [
  [/^%DLQ%/, 'a dead-letter topic'],
  [/^%RETRY%/, 'a retry topic'],
  [/^%/, 'a broker-internal name'],
  [/^__/, 'a broker-internal name'],
  [/^rmq_sys_/i, 'a RocketMQ system topic'],
  [
    /^(SCHEDULE_TOPIC_XXXX|TBW102|DefaultCluster|SELF_TEST_TOPIC|OFFSET_MOVED_EVENT)$/,
    'a RocketMQ system topic',
  ],
];

/** Why a name is reserved, or undefined when it is an ordinary name. */
export function reservedName(name: string): string | undefined {
  for (const [re, why] of RESERVED) if (re.test(name)) return why;
  return undefined;
}

/**
 * A grant pattern: `*` matches any run of characters, `?` one character, everything else itself.
 * A reserved name matches only a pattern that is itself reserved once its wildcards are taken
 * out ("%DLQ%*" grants the dead-letter topics; "*" does not).
 */
export class Pattern {
  readonly source: string;
  readonly #re: RegExp;
  readonly #explicit: boolean;

  constructor(source: string) {
    this.source = source;
    const body = source
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.');
    this.#re = new RegExp(`^${body}$`);
    const literal = source.replace(/[*?]/g, '');
    this.#explicit = !/^[*?]/.test(source) && reservedName(literal) !== undefined;
  }

  matches(name: string): boolean {
    if (!this.#re.test(name)) return false;
    return reservedName(name) === undefined || this.#explicit;
  }
}

export interface Grants {
  readonly publish: readonly Pattern[];
  readonly consume: readonly Pattern[];
  readonly group: readonly Pattern[];
}

const EVERYTHING: Grants = Object.freeze({
  publish: [new Pattern('*')],
  consume: [new Pattern('*')],
  group: [new Pattern('*')],
});

class GrantedPrincipal implements Principal {
  constructor(
    readonly name: string,
    readonly grants: Grants,
  ) {}

  may(action: Action, name: string): boolean {
    for (const p of this.grants[action]) if (p.matches(name)) return true;
    return false;
  }

  check(action: Action, name: string): void {
    if (this.may(action, name)) return;
    const who = this.name === '' ? 'an anonymous caller' : `principal "${this.name}"`;
    const reserved = reservedName(name);
    const why = reserved
      ? `it is ${reserved}, which needs a grant naming it explicitly in AUTH_FILE (e.g. "${name.slice(0, 5)}*")`
      : `no ${action} pattern of ${who} in AUTH_FILE matches it`;
    throw new MqError(
      'PERMISSION_DENIED',
      `${who} may not ${ACTION_WORDS[action]} ${quoteInput(name)}: ${why}`,
    );
  }
}

/** The principal of a gateway without auth: may use any name that is not reserved. */
export const ANONYMOUS: Principal = new GrantedPrincipal('', EVERYTHING);

const NAME = /^[A-Za-z0-9_.@-]{1,64}$/;
const MIN_TOKEN = 16;

const patternList = z.array(z.string().min(1).max(255)).max(1000).default([]);

const principalSchema = z
  .object({
    token: z.string().min(MIN_TOKEN).max(4096).optional(),
    tokenSha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/i, 'must be 64 hex digits (sha256 of the token)')
      .optional(),
    publish: patternList,
    consume: patternList,
    groups: patternList,
  })
  .strict()
  .refine((p) => (p.token === undefined) !== (p.tokenSha256 === undefined), {
    message: 'give exactly one of token or tokenSha256',
  });

const authFileSchema = z
  .object({
    principals: z.record(z.string().regex(NAME, 'names use letters, digits, _ . @ -'), principalSchema),
  })
  .strict();

/** One configured principal: the digest of its token and what it may do. */
export interface PrincipalEntry {
  readonly name: string;
  readonly tokenDigest: Buffer;
  readonly grants: Grants;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** AUTH_TOKENS entries: each may do everything that is not reserved. */
export function entriesFromTokens(tokens: ReadonlyMap<string, string>): PrincipalEntry[] {
  return [...tokens].map(([token, name]) => ({ name, tokenDigest: sha256(token), grants: EVERYTHING }));
}

/**
 * Reads an AUTH_FILE (JSON, or YAML by its .yaml/.yml extension or when it is not JSON). Every
 * mistake stops start-up naming the file and the field.
 */
export function readAuthFile(path: string): PrincipalEntry[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError(`AUTH_FILE ${path} cannot be read: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError(
      `AUTH_FILE ${path} is not valid ${/\.ya?ml$/i.test(path) ? 'YAML' : 'JSON'}: ${(err as Error).message}`,
    );
  }
  const parsed = authFileSchema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.join('.') || '(top level)';
    throw new InvalidArgumentError(
      `AUTH_FILE ${path}: ${where}: ${issue?.message ?? 'invalid'}; expected { principals: { <name>: { token | tokenSha256, publish: [...], consume: [...], groups: [...] } } }`,
    );
  }
  return Object.entries(parsed.data.principals).map(([name, p]) => ({
    name,
    tokenDigest: p.token !== undefined ? sha256(p.token) : Buffer.from(p.tokenSha256 as string, 'hex'),
    grants: {
      publish: p.publish.map((s) => new Pattern(s)),
      consume: p.consume.map((s) => new Pattern(s)),
      group: p.groups.map((s) => new Pattern(s)),
    },
  }));
}

/** Checks `authorization: Bearer <token>` against the configured principals (compared as digests). */
export class Authenticator {
  readonly #byDigest = new Map<string, { digest: Buffer; principal: Principal }>();

  constructor(entries: readonly PrincipalEntry[]) {
    const names = new Set<string>();
    for (const e of entries) {
      if (names.has(e.name)) {
        throw new InvalidArgumentError(
          `principal "${e.name}" is defined twice (AUTH_TOKENS and AUTH_FILE share one namespace)`,
        );
      }
      names.add(e.name);
      const key = e.tokenDigest.toString('hex');
      if (this.#byDigest.has(key)) {
        throw new InvalidArgumentError(`principal "${e.name}" has the same token as another principal`);
      }
      this.#byDigest.set(key, { digest: e.tokenDigest, principal: new GrantedPrincipal(e.name, e.grants) });
    }
  }

  get enabled(): boolean {
    return this.#byDigest.size > 0;
  }

  /** The principal a header proves; ANONYMOUS when auth is off; throws UNAUTHENTICATED otherwise. */
  authenticate(header: string | undefined): Principal {
    if (!this.enabled) return ANONYMOUS;
    const m = header === undefined ? null : /^Bearer\s+(\S{1,4096})$/i.exec(header);
    if (!m) {
      throw new MqError(
        'UNAUTHENTICATED',
        "missing bearer token: send metadata 'authorization: Bearer <token>' with a token from AUTH_TOKENS or AUTH_FILE",
      );
    }
    const d = sha256(m[1] as string);
    const found = this.#byDigest.get(d.toString('hex'));
    if (!found || !timingSafeEqual(found.digest, d)) {
      throw new MqError('UNAUTHENTICATED', 'invalid bearer token in the authorization metadata');
    }
    return found.principal;
  }
}
