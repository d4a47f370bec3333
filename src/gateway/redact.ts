import { urlSecrets } from '../brokers/index.js';

/**
 * Secrets the gateway knows (credentials written in broker URLs) scrubbed from any text that
 * leaves it: logs, errors sent to clients, health details. Client libraries put connection URLs
 * in their error messages, so removing the password from our own log fields is not enough.
 */
export class Redactor {
  readonly #secrets: string[];

  constructor(secrets: Iterable<string>) {
    const all = new Set<string>();
    for (const s of secrets) {
      if (s.length === 0) continue;
      all.add(s);
      // As it appears inside a JSON log line.
      all.add(JSON.stringify(s).slice(1, -1));
    }
    // Longest first, so a secret containing another is removed whole.
    this.#secrets = [...all].sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.#secrets.length === 0;
  }

  scrub(text: string): string {
    let out = text;
    for (const s of this.#secrets) if (out.includes(s)) out = out.split(s).join('***');
    return out;
  }
}

export const NO_SECRETS = new Redactor([]);

/** The redactor for a gateway's configured brokers. */
export function brokerRedactor(urls: readonly string[]): Redactor {
  return new Redactor(urls.flatMap((u) => urlSecrets(u)));
}
