/**
 * Kafka's own Java tools on both sides of the adapter: what the adapter publishes is read by
 * Kafka's console consumer (org.apache.kafka.tools.consumer.ConsoleConsumer in 3.9, from the
 * kafka-tools jar the brokers script collects) with key, headers and partition intact, and what
 * kafka.tools.ConsoleProducer writes (keys partitioned by Java's default partitioner) reaches an
 * adapter subscription on the partition our murmur2 predicts. Two JVM runs in total.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Delivery } from '../../../src/brokers/broker.js';
import { partitionForKey } from '../../../src/brokers/kafka/murmur2.js';
import { bodyText } from '../../../src/core/message.js';
import { kafkaState, openTestKafka } from './env.js';

interface JavaRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a Kafka main class on Kafka's jars. */
function runKafkaTool(
  mainClass: string,
  args: string[],
  stdin: string | undefined,
  timeoutMs: number,
): Promise<JavaRun> {
  const { libDir } = kafkaState();
  return new Promise((resolve, reject) => {
    const child = spawn(
      'java',
      [
        '-Xmx256m',
        '-XX:TieredStopAtLevel=1',
        '-XX:+UseSerialGC',
        '-cp',
        join(libDir, '*'),
        mainClass,
        ...args,
      ],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(stdin ?? '');
  });
}

test('Kafka’s console consumer reads what the adapter published: key, headers, partition', async () => {
  const broker = await openTestKafka('partitions=3');
  try {
    const topic = `interop-out-${randomUUID()}`;
    const p = await broker.producer(topic);
    const keys = ['21', 'foobar', 'order-7', 'kafka'];
    for (const key of keys) {
      await p.send({
        body: `body-${key}`,
        key,
        tag: 'tagX',
        businessKey: `bk-${key}`,
        properties: { traceId: `t-${key}` },
      });
    }
    await p.close();
    const run = await runKafkaTool(
      'org.apache.kafka.tools.consumer.ConsoleConsumer',
      [
        '--bootstrap-server',
        kafkaState().bootstrap,
        '--topic',
        topic,
        '--from-beginning',
        '--max-messages',
        String(keys.length),
        '--timeout-ms',
        '60000',
        '--property',
        'print.partition=true',
        '--property',
        'print.headers=true',
        '--property',
        'print.key=true',
      ],
      undefined,
      120_000,
    );
    assert.equal(run.code, 0, `console consumer failed:\n${run.stderr.slice(-2000)}`);
    const lines = run.stdout.split('\n').filter((l) => l.startsWith('Partition:'));
    assert.equal(lines.length, keys.length, `console consumer output:\n${run.stdout}`);
    for (const line of lines) {
      // Partition:<p> \t <headers> \t <key> \t <value>
      const [partitionField, headers, key, value] = line.split('\t');
      assert.ok(key !== undefined && headers !== undefined && value !== undefined, line);
      assert.ok(keys.includes(key), `key ${key} intact`);
      assert.equal(value, `body-${key}`);
      assert.equal(Number(partitionField?.slice('Partition:'.length)), partitionForKey(Buffer.from(key), 3));
      const h = new Map(
        headers.split(',').map((kv) => [kv.slice(0, kv.indexOf(':')), kv.slice(kv.indexOf(':') + 1)]),
      );
      assert.equal(h.get('mqgate-tag'), 'tagX');
      assert.equal(h.get('mqgate-business-key'), `bk-${key}`);
      assert.equal(h.get('traceId'), `t-${key}`);
      assert.ok(Number(h.get('mqgate-born-at')) > 0, 'born-at header');
    }
  } finally {
    await broker.close();
  }
});

test('Kafka console producer writes reach an adapter subscription on Java’s partitions', async () => {
  const broker = await openTestKafka('partitions=3');
  try {
    const topic = `interop-in-${randomUUID()}`;
    // Creates the topic with 3 partitions before Java writes to it.
    const sub = await broker.subscribe({ topic, group: `g-${randomUUID()}`, start: 'earliest' });
    const n = 24;
    const lines = Array.from(
      { length: n },
      (_, i) => `mqgate-tag:java,origin:console\tjk-${i % 12}\tjava-${i}`,
    );
    const run = await runKafkaTool(
      'kafka.tools.ConsoleProducer',
      [
        '--bootstrap-server',
        kafkaState().bootstrap,
        '--topic',
        topic,
        '--property',
        'parse.key=true',
        '--property',
        'parse.headers=true',
      ],
      `${lines.join('\n')}\n`,
      120_000,
    );
    assert.equal(run.code, 0, `console producer failed:\n${run.stderr.slice(-2000)}`);
    const it = sub[Symbol.asyncIterator]();
    const got: Delivery[] = [];
    const deadline = Date.now() + 30_000;
    while (got.length < n && Date.now() < deadline) {
      const r = await it.next();
      if (r.done) break;
      got.push(r.value);
      await r.value.ack();
    }
    assert.equal(got.length, n);
    const lastSeqPerKey = new Map<string, number>();
    for (const d of got) {
      const m = d.message;
      assert.ok(m.key?.startsWith('jk-'));
      assert.equal(m.tag, 'java');
      assert.equal(m.properties.origin, 'console');
      const partition = Number(m.id.split('/')[1]);
      assert.equal(partition, partitionForKey(Buffer.from(m.key as string), 3), `key ${m.key} partition`);
      const seq = Number(bodyText(m).slice('java-'.length));
      assert.ok(seq > (lastSeqPerKey.get(m.key as string) ?? -1), 'per-key order');
      lastSeqPerKey.set(m.key as string, seq);
      assert.ok(m.bornAt > 0);
    }
    await sub.close();
  } finally {
    await broker.close();
  }
});
