import assert from 'node:assert/strict';
import { test } from 'node:test';
import { openBroker, parseBrokerUrl, redactUrl, urlSecrets } from '../../../src/brokers/index.js';
import { withLeakCheck } from '../../support/leaks.js';

test('a host list in the authority moves to the adapter parameter', () => {
  const k = parseBrokerUrl('kafka://a:9092,b:9093,c:9094?clientId=x');
  assert.equal(k.host, 'a:9092');
  assert.equal(k.searchParams.get('brokers'), 'b:9093,c:9094');
  assert.equal(k.searchParams.get('clientId'), 'x');
  const n = parseBrokerUrl('nats://h1:4222,h2:4222');
  assert.equal(n.host, 'h1:4222');
  assert.equal(n.searchParams.get('servers'), 'h2:4222');
  assert.equal(parseBrokerUrl('rocketmq://127.0.0.1:8081').host, '127.0.0.1:8081');
});

test('unknown schemes and non-URLs are INVALID_ARGUMENT naming what is supported', async () => {
  await assert.rejects(openBroker('ftp://x'), (err: { code: string; message: string }) => {
    assert.equal(err.code, 'INVALID_ARGUMENT');
    assert.match(err.message, /memory:\/\/, kafka:\/\/, rocketmq:\/\/, nats:\/\//);
    return true;
  });
  await assert.rejects(openBroker('not a url'), { code: 'INVALID_ARGUMENT' });
});

test('credentials never reach logs: user, password, a NATS token in the user part, secret parameters', () => {
  assert.equal(redactUrl('nats://user:secret@h:4222'), 'nats://***:***@h:4222');
  assert.equal(redactUrl('nats://s3cr3tT0ken@h:4222'), 'nats://***@h:4222');
  assert.equal(
    redactUrl('rocketmq://h:8081?accessKey=AK&secretKey=SK1234&cluster=c'),
    'rocketmq://h:8081?accessKey=***&secretKey=***&cluster=c',
  );
  assert.equal(redactUrl('nats://tok1@a:1,b:2'), 'nats://***@a:1?servers=b%3A2');
  assert.deepEqual(
    urlSecrets('nats://us%40er:p%2Fw@h:1').sort(),
    ['p%2Fw', 'p/w', 'us%40er', 'us@er'].sort(),
  );
});

test('opening and closing the embedded broker by URL leaves nothing behind', async () => {
  await withLeakCheck(async () => {
    const b = await openBroker('memory://');
    assert.equal(b.kind, 'memory');
    await b.close();
  });
});
