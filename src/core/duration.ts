import { InvalidArgumentError } from './errors.js';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses durations written as Go-style configuration writes them: `500ms`, `30s`, `2m`,
 * `1h`, `3d`, or a combination (`1m30s`). A bare number is rejected: its unit would be a guess.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const input = text.trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null = re.exec(input);
  while (m !== null) {
    total += Number(m[1]) * (UNITS[m[2] as string] as number);
    matched = re.lastIndex;
    m = re.exec(input);
  }
  if (input === '' || matched !== input.length) {
    throw new InvalidArgumentError(
      `${what}: "${text}" is not a duration; write a number with a unit, e.g. 500ms, 30s, 2m, 1h, 3d`,
    );
  }
  return Math.round(total);
}

export function formatDuration(ms: number): string {
  if (ms % 86_400_000 === 0 && ms > 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0 && ms > 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 0) return `${ms / 60_000}m`;
  if (ms % 1000 === 0 && ms > 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}
