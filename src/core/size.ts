/**
 * Sizes in configuration: a whole number of bytes, optionally with a unit. Decimal units are
 * powers of 1000 and binary units powers of 1024 (`4MB` = 4,000,000 bytes, `4MiB` = 4,194,304), as
 * the SI and IEC prefixes define them, so a value means the same in every setting that takes one.
 */
const UNITS: Readonly<Record<string, number>> = {
  '': 1,
  b: 1,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

/** What parseSize accepts, for error messages. */
export const SIZE_FORMAT =
  'a whole number of bytes, optionally with a unit (B, KB, MB, GB, KiB, MiB, GiB), e.g. 4MiB';

/** The number of bytes `text` names, or undefined when it is not a size (or not a safe integer). */
export function parseSize(text: string): number | undefined {
  const m = /^(\d+)\s*([a-z]*)$/i.exec(text.trim());
  const unit = m ? UNITS[(m[2] ?? '').toLowerCase()] : undefined;
  if (!m || unit === undefined) return undefined;
  const n = Number(m[1]) * unit;
  return Number.isSafeInteger(n) ? n : undefined;
}
