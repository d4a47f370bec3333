import { InvalidArgumentError, quoteInput } from './errors.js';

/**
 * A RocketMQ-style tag expression: `*` (or empty) matches everything, `a||b` matches either tag.
 * Parsed once per subscription so the hot path is a set look-up.
 */
export interface TagFilter {
  readonly expression: string;
  /** undefined when every tag (and no tag) matches. */
  readonly tags: ReadonlySet<string> | undefined;
  matches(tag: string | undefined): boolean;
}

const TAG_PATTERN = /^[^\s|*]+$/;

export function parseTagExpression(expression: string | undefined): TagFilter {
  const expr = (expression ?? '').trim();
  if (expr === '' || expr === '*') {
    return { expression: '*', tags: undefined, matches: () => true };
  }
  const parts = expr.split('||').map((p) => p.trim());
  for (const part of parts) {
    if (!TAG_PATTERN.test(part)) {
      throw new InvalidArgumentError(
        `invalid tag expression ${quoteInput(expression)}: use "*" or tags joined by "||" (e.g. "a||b"); ` +
          `a tag must be non-empty and contain no spaces, "|" or "*"`,
      );
    }
  }
  const tags = new Set(parts);
  return { expression: parts.join('||'), tags, matches: (tag) => tag !== undefined && tags.has(tag) };
}
