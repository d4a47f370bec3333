import { ResourceExhaustedError } from '../core/errors.js';
import type { Audit } from './audit.js';

export interface QuotaLimit {
  readonly limit: number;
  /** The setting that changes it, named in the error. */
  readonly setting: string;
}

/**
 * Counts one kind of resource per caller and in total. Per-caller counts are keyed by what a
 * caller cannot choose freely: the token principal when auth is on (the access key id when off),
 * never a secret, so inventing new secrets does not buy new quota.
 */
export class Quota {
  readonly #perKey = new Map<string, number>();
  #total = 0;

  constructor(
    readonly what: string,
    readonly perCaller: QuotaLimit | undefined,
    readonly global: QuotaLimit,
    readonly audit: Audit,
  ) {}

  get total(): number {
    return this.#total;
  }

  held(key: string): number {
    return this.#perKey.get(key) ?? 0;
  }

  /**
   * Counts one more for `key`, or throws RESOURCE_EXHAUSTED naming the limit and its setting.
   * `who` names the caller in the message (a principal or access key id, never a secret).
   */
  acquire(key: string, who: string, hint: string): void {
    if (this.#total >= this.global.limit) {
      this.audit.refuse('quota', who, `${this.global.setting}`);
      throw new ResourceExhaustedError(
        `the gateway holds ${this.#total} ${this.what}, its limit (${this.global.setting}=${this.global.limit}); retry later or raise the limit`,
        { retryable: true },
      );
    }
    const n = this.#perKey.get(key) ?? 0;
    if (this.perCaller && n >= this.perCaller.limit) {
      this.audit.refuse('quota', who, `${this.perCaller.setting}`);
      throw new ResourceExhaustedError(
        `${who} already holds ${n} ${this.what}, the limit (${this.perCaller.setting}=${this.perCaller.limit}); ${hint}`,
        { retryable: false },
      );
    }
    this.#perKey.set(key, n + 1);
    this.#total++;
  }

  release(key: string): void {
    const n = this.#perKey.get(key);
    if (n === undefined) return;
    if (n <= 1) this.#perKey.delete(key);
    else this.#perKey.set(key, n - 1);
    this.#total--;
  }

  clear(): void {
    this.#perKey.clear();
    this.#total = 0;
  }
}
