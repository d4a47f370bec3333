import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeRecord, encodeMessage, HEADER_TAG } from '../../../src/brokers/kafka/codec.js';

test('properties with the mqgate- prefix travel as headers (regression: the event bus could not dead-letter on Kafka)', () => {
  const rec = encodeMessage(
    { body: 'x', tag: 't', properties: { 'mqgate-error': 'boom', 'mqgate-attempts': '3' } },
    1000,
  );
  const headers = [...rec.headers].map(([k, v]) => [k, v] as [Buffer, Buffer]);
  const back = decodeRecord('topic', 0, 5n, { key: null, value: rec.value, headers, timestamp: 1000n }, 0);
  assert.equal(back.properties['mqgate-error'], 'boom');
  assert.equal(back.properties['mqgate-attempts'], '3');
  assert.equal(back.tag, 't');
  assert.equal(back.properties[HEADER_TAG], undefined, 'the tag header is the tag, not a property');
});

test('the adapter’s own header names are refused as properties, naming them', () => {
  assert.throws(
    () => encodeMessage({ body: 'x', properties: { [HEADER_TAG]: 'spoof' } }, 1),
    (err: Error & { code: string }) => {
      assert.equal(err.code, 'INVALID_ARGUMENT');
      assert.match(err.message, /mqgate-tag, mqgate-business-key, mqgate-born-at/);
      return true;
    },
  );
});
