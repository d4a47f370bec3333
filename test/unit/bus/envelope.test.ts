import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  createEnvelope,
  decodeEnvelope,
  uuidv7,
  uuidv7Time,
  validateEnvelope,
} from '../../../src/bus/envelope.js';
import { InvalidArgumentError } from '../../../src/core/errors.js';

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('uuidv7', () => {
  it('has the RFC 9562 layout: version 7, variant 10, Unix milliseconds in the first 48 bits', () => {
    const before = Date.now();
    const id = uuidv7();
    const afterMs = Date.now();
    assert.match(id, UUID_V7);
    const t = uuidv7Time(id);
    // The generator may carry its clock forward a few ms after bursts from earlier tests.
    assert.ok(t >= before && t <= afterMs + 1000, `timestamp ${t} not within [${before}, ${afterMs}]`);
  });

  it('is unique and strictly increasing within a process, even within one millisecond', () => {
    const ids = Array.from({ length: 20_000 }, () => uuidv7());
    assert.equal(new Set(ids).size, ids.length);
    for (let i = 1; i < ids.length; i++) {
      assert.ok((ids[i] as string) > (ids[i - 1] as string), `id ${i} is not greater than id ${i - 1}`);
      assert.match(ids[i] as string, UUID_V7);
    }
  });
});

describe('envelope', () => {
  it('createEnvelope fills eventId, occurredAt and eventVersion', () => {
    const env = createEnvelope({ aggregateId: 'a-1', eventType: 'Created', payload: { x: 1 } });
    assert.match(env.eventId, UUID_V7);
    assert.equal(env.eventVersion, 1);
    assert.equal(Date.parse(env.occurredAt), uuidv7Time(env.eventId));
    assert.deepEqual(validateEnvelope(env), env);
    const explicit = createEnvelope({
      aggregateId: 'a-1',
      eventType: 'Created',
      eventVersion: 3,
      occurredAt: '2025-01-31T12:00:00+01:00',
      payload: null,
      tenantId: 't',
    });
    assert.equal(explicit.eventVersion, 3);
    assert.equal(explicit.occurredAt, '2025-01-31T12:00:00+01:00');
    assert.deepEqual(validateEnvelope(explicit), explicit);
  });

  it('rejects invalid envelopes naming every bad field', () => {
    const good = createEnvelope({ aggregateId: 'a', eventType: 'T', payload: 1 });
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ eventVersion: 1.5 }, /"eventVersion" must be an integer greater than 0/],
      [{ eventVersion: '1' }, /"eventVersion"/],
      [{ eventId: '01234567-89ab-4def-8123-456789abcdef' }, /"eventId" must be a UUIDv7/],
      [{ occurredAt: '2025-13-01T00:00:00Z' }, /"occurredAt"/],
      [{ eventType: '' }, /"eventType"/],
      [{ payload: undefined }, /"payload" is required/],
      [{ traceId: 5 }, /"traceId"/],
    ];
    for (const [patch, pattern] of cases) {
      assert.throws(
        () => validateEnvelope({ ...good, ...patch }),
        (err: unknown) => err instanceof InvalidArgumentError && pattern.test(err.message),
        JSON.stringify(patch),
      );
    }
    assert.throws(() => validateEnvelope(null), InvalidArgumentError);
  });

  it('decodes leniently: unknown fields from newer publishers are dropped, not rejected', () => {
    const env = createEnvelope({ aggregateId: 'a', eventType: 'T', payload: { ok: true } });
    assert.deepEqual(decodeEnvelope(JSON.stringify({ ...env, addedLater: 'x' })), env);
    assert.throws(() => decodeEnvelope('{'), /body is not JSON/);
    assert.throws(() => decodeEnvelope(JSON.stringify({ ...env, aggregateId: 7 })), /"aggregateId"/);
  });
});
