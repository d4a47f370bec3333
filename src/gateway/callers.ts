import { createHash } from 'node:crypto';
import { quoteInput } from '../core/errors.js';
import type { Principal } from './auth.js';

/**
 * Who is calling, as the registries see it.
 *
 * - `owner`: the principal's name. Only the owner may use an id it created ('' for every caller
 *   when auth is off: ids are then the capability).
 * - `identity`: principal + access key id + a digest of the secret. Broker producers are shared
 *   only within one identity, so one key id never reaches a producer opened with another's
 *   secret, and cleanup by topic or group touches only the same identity's resources.
 * - `quotaKey`: what per-caller limits count by: the principal when auth is on, the access key id
 *   when off. Never the secret: a new secret must not buy a new quota.
 */
export interface Caller {
  readonly principal: Principal;
  readonly owner: string;
  readonly accessKeyId: string;
  readonly identity: string;
  readonly quotaKey: string;
  /** How errors and audit lines name this caller. */
  readonly label: string;
}

export function digest(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 32);
}

export function makeCaller(principal: Principal, accessKeyId: string, accessKeySecret: string): Caller {
  const authOn = principal.name !== '';
  return {
    principal,
    owner: principal.name,
    accessKeyId,
    identity: `${principal.name}\u0000${accessKeyId}\u0000${digest(accessKeySecret)}`,
    quotaKey: authOn ? principal.name : accessKeyId,
    label: authOn
      ? `principal "${principal.name}"`
      : accessKeyId
        ? `access key ${quoteInput(accessKeyId)}`
        : 'callers without an access key',
  };
}
