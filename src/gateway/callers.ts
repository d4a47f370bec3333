import { createHash, timingSafeEqual } from 'node:crypto';
import { MqError } from '../core/errors.js';

/**
 * Who is calling. Resources are owned by a caller: the bearer-token principal (when auth is on)
 * plus the access key id and a digest of the secret. The seed's gateway reused producers by key
 * id alone, so one caller's key id reached another's authenticated producer.
 */
export interface Caller {
  readonly principal: string;
  readonly accessKeyId: string;
  readonly secretDigest: string;
  /** Stable key for ownership checks and per-caller limits. */
  readonly owner: string;
}

export function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

export function makeCaller(principal: string, accessKeyId: string, accessKeySecret: string): Caller {
  const secretDigest = digest(accessKeySecret);
  return {
    principal,
    accessKeyId,
    secretDigest,
    owner: `${principal}\u0000${accessKeyId}\u0000${secretDigest}`,
  };
}

/** Checks `authorization: Bearer <token>` against the configured tokens (compared as digests). */
export class Authenticator {
  readonly #byDigest = new Map<string, { name: string; digest: Buffer }>();

  constructor(tokens: Map<string, string>) {
    for (const [token, name] of tokens) {
      const d = createHash('sha256').update(token).digest();
      this.#byDigest.set(d.toString('hex'), { name, digest: d });
    }
  }

  get enabled(): boolean {
    return this.#byDigest.size > 0;
  }

  /**
   * Returns the principal name, '' when auth is off; throws UNAUTHENTICATED otherwise. The header
   * is read lazily so calls skip the metadata look-up when auth is off (every call pays it).
   */
  authenticate(header: string | undefined | (() => string | undefined)): string {
    if (!this.enabled) return '';
    if (typeof header === 'function') header = header();
    const m = header === undefined ? null : /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) {
      throw new MqError(
        'UNAUTHENTICATED',
        "missing bearer token: send metadata 'authorization: Bearer <token>' with a token from AUTH_TOKENS",
      );
    }
    const d = createHash('sha256')
      .update(m[1] as string)
      .digest();
    const found = this.#byDigest.get(d.toString('hex'));
    if (!found || !timingSafeEqual(found.digest, d)) {
      throw new MqError('UNAUTHENTICATED', 'invalid bearer token in the authorization metadata');
    }
    return found.name;
  }
}
