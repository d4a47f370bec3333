import assert from 'node:assert/strict';
import { test } from 'node:test';
import { murmur2 as libraryMurmur2 } from '@platformatic/kafka';
import { parseKafkaUrl } from '../../../src/brokers/kafka/config.js';
import { murmur2, partitionForKey, toPositive } from '../../../src/brokers/kafka/murmur2.js';

/**
 * Expected values of org.apache.kafka.common.utils.Utils.murmur2: the first six are the cases of
 * Kafka's own UtilsTest.testMurmur2, the rest are librdkafka's and Akka's cross-checks against
 * the Java implementation.
 */
const JAVA_MURMUR2: Array<[string | number[], number]> = [
  ['21', -973932308],
  ['foobar', -790332482],
  ['a-little-bit-long-string', -985981536],
  ['a-little-bit-longer-string', -1486304829],
  ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
  [[0x61, 0x62, 0x63], 479470107],
  ['kafka', -798503068],
  ['1', -1993445489],
  ['12', 126087238],
  ['123', -267702483],
  ['1234', -1614185708],
  ['12345', -1188365604],
];

const bytes = (v: string | number[]): Uint8Array =>
  typeof v === 'string' ? new TextEncoder().encode(v) : Uint8Array.from(v);

test('murmur2 matches Kafka Utils.murmur2 on Kafka’s own test vectors', () => {
  for (const [input, expected] of JAVA_MURMUR2) {
    assert.equal(murmur2(bytes(input)), expected, `murmur2(${JSON.stringify(input)})`);
  }
});

test('murmur2 agrees with the client library’s BigInt port on every length 0..64', () => {
  for (let len = 0; len <= 64; len++) {
    const data = Buffer.alloc(len);
    for (let i = 0; i < len; i++) data[i] = (i * 37 + len * 11) & 0xff;
    assert.equal(murmur2(data), libraryMurmur2(data), `length ${len}`);
  }
});

test('partitionForKey is toPositive(murmur2) % n, Java’s default partitioner', () => {
  // Negative hashes are where `>>> 0` (the library's default partitioner) and Java's
  // `& 0x7fffffff` disagree: -973932308 & 0x7fffffff = 1173551340, and
  // 1173551340 % 3 = 0 while (-973932308 >>> 0) % 3 = 1.
  assert.equal(toPositive(-973932308), 1173551340);
  assert.equal(partitionForKey(bytes('21'), 3), 0);
  assert.notEqual((-973932308 >>> 0) % 3, partitionForKey(bytes('21'), 3));
  assert.equal(partitionForKey(bytes('abc'), 3), 479470107 % 3);
  assert.equal(partitionForKey(bytes('kafka'), 10), (-798503068 & 0x7fffffff) % 10);
  assert.equal(toPositive(-2147483648), 0, 'MIN_VALUE maps to 0 (not Math.abs)');
  for (const [input, hash] of JAVA_MURMUR2) {
    for (const n of [1, 2, 3, 7, 12]) {
      assert.equal(partitionForKey(bytes(input), n), (hash & 0x7fffffff) % n);
    }
  }
});

test('kafka:// URLs are validated with messages naming the parameter', () => {
  const ok = parseKafkaUrl(
    new URL(
      'kafka://127.0.0.1:19092?brokers=127.0.0.1:19093&clientId=gw-1&autoCreateTopics=false&partitions=6&replicationFactor=1',
    ),
  );
  assert.deepEqual(ok.brokers, ['127.0.0.1:19092', '127.0.0.1:19093']);
  assert.equal(ok.clientId, 'gw-1');
  assert.equal(ok.autoCreateTopics, false);
  assert.equal(ok.partitions, 6);
  assert.equal(ok.replicationFactor, 1);
  const defaults = parseKafkaUrl(new URL('kafka://localhost'));
  assert.deepEqual(defaults.brokers, ['localhost:9092']);
  assert.equal(defaults.autoCreateTopics, true);
  const bad: Array<[string, RegExp]> = [
    ['kafka://h:1?partitions=0', /partitions="0".*integer >= 1/],
    ['kafka://h:1?partitions=x', /partitions="x"/],
    ['kafka://h:1?replicationFactor=0', /replicationFactor="0".*-1/],
    ['kafka://h:1?autoCreateTopics=yes', /autoCreateTopics="yes".*true or false/],
    ['kafka://h:1?clientId=a%20b', /clientId="a b"/],
    ['kafka://h:1?colour=red', /"colour" is unknown/],
    ['kafka://h:1?brokers=nohost', /brokers entry "nohost" is not host:port/],
    ['kafka://h:1/path', /has a path/],
    ['kafka://u:p@h:1', /credentials/],
  ];
  for (const [url, message] of bad) {
    assert.throws(
      () => parseKafkaUrl(new URL(url)),
      (err: unknown) => {
        assert.equal((err as { code?: string }).code, 'INVALID_ARGUMENT', url);
        assert.match((err as Error).message, message, url);
        return true;
      },
    );
  }
});
