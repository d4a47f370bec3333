/**
 * With auth off, knowing an id is the only capability: every id and receipt handle the gateway
 * hands out must be a random (v4) UUID, 1,000 of them all distinct, and a transaction id must
 * not be derived from the (guessable) broker message id.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { call, type Received, receive, startTestGateway, type TestGateway } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import { assertHealthy, createConsumer, createProducer, gauge, UUID_V4 } from './helpers.js';

const N = 1000;

/** Format and distinctness, plus each random hex position varies (no counter in disguise). */
function assertRandomIds(ids: string[], what: string): void {
  assert.equal(ids.length, N);
  for (const id of ids) assert.match(id, UUID_V4, `${what} ${id} is not a v4 UUID`);
  assert.equal(new Set(ids).size, N, `${what}s repeat`);
  const hex = ids.map((id) => id.replace(/-/g, ''));
  for (let pos = 0; pos < 32; pos++) {
    if (pos === 12) continue; // the version nibble
    const seen = new Set(hex.map((h) => h[pos]));
    assert.ok(
      seen.size >= (pos === 16 ? 4 : 12),
      `${what}s barely vary at hex position ${pos}: ${[...seen]}`,
    );
  }
}

describe('with auth off, ids and receipt handles are random UUIDs', () => {
  let gw: TestGateway;
  let baseline: ResourceCounts;
  const topic = `ids-${randomUUID()}`;
  let owner = '';
  let ownerConsumer = '';
  let ownerStream: ReturnType<typeof receive>;

  /** The session of the "owner" keeps working through every test. */
  const ownerUnaffected = async (): Promise<void> => {
    const body = `owner-${randomUUID()}`;
    await call(gw.client, 'SendMessage', { producer_id: owner, message_body: body });
    await eventually(() => ownerStream.messages.some((m) => m.message_body === body), 'owner delivery');
    const m = ownerStream.messages.find((x) => x.message_body === body) as Received;
    await call(gw.client, 'AckMessage', { consumer_id: ownerConsumer, receipt_handle: m.receipt_handle });
    await assertHealthy(gw.client);
  };

  before(async () => {
    baseline = countResources();
    gw = await startTestGateway({ ackTimeoutMs: 60_000 });
    owner = await createProducer(gw.client, undefined, topic);
    ownerConsumer = await createConsumer(gw.client, undefined, topic, `owner-${randomUUID()}`);
    ownerStream = receive(gw.client, ownerConsumer);
  });
  after(async () => {
    ownerStream?.end();
    await gw?.close();
  });

  test('1,000 producer ids are distinct v4 UUIDs', async () => {
    const ids: string[] = [];
    for (let i = 0; i < N; i += 50) {
      ids.push(
        ...(await Promise.all(
          Array.from({ length: 50 }, (_, j) =>
            createProducer(gw.client, undefined, topic, { access_key_id: `ak-${(i + j) % 10}` }),
          ),
        )),
      );
    }
    assertRandomIds(ids, 'producer id');
    assert.ok(!ids.includes(owner));
    for (const id of ids) await call(gw.client, 'CleanupProducer', { producer_id: id });
    assert.equal(await gauge(gw.metricsUrl, 'producer_handles'), 1);
    await ownerUnaffected();
  });

  test('1,000 consumer ids are distinct v4 UUIDs', async () => {
    const ids: string[] = [];
    const group = `ids-g-${randomUUID()}`;
    for (let i = 0; i < N; i += 50) {
      ids.push(
        ...(await Promise.all(
          Array.from({ length: 50 }, (_, j) =>
            createConsumer(gw.client, undefined, topic, group, { access_key_id: `ak-${(i + j) % 10}` }),
          ),
        )),
      );
    }
    assertRandomIds(ids, 'consumer id');
    for (const id of ids) await call(gw.client, 'CleanupConsumer', { consumer_id: id });
    assert.equal(await gauge(gw.metricsUrl, 'active_consumers'), 1);
    await ownerUnaffected();
  });

  test('1,000 receipt handles are distinct v4 UUIDs, none equal to a message id', async () => {
    const batchTopic = `rh-${randomUUID()}`;
    const producerId = await createProducer(gw.client, undefined, batchTopic);
    const consumerId = await createConsumer(gw.client, undefined, batchTopic, `rh-${randomUUID()}`);
    const s = receive(gw.client, consumerId);
    const handles: string[] = [];
    const messageIds = new Set<string>();
    let acked = 0;
    const acking = new Set<Promise<unknown>>();
    const collect = setInterval(() => {
      for (const m of s.messages.splice(0)) {
        handles.push(m.receipt_handle);
        messageIds.add(m.message_id);
        const p = call(gw.client, 'AckMessage', {
          consumer_id: consumerId,
          receipt_handle: m.receipt_handle,
        }).then(() => {
          acked++;
          acking.delete(p);
        });
        acking.add(p);
      }
    }, 5);
    try {
      for (let i = 0; i < N; i += 500) {
        const r = await call<{ success: boolean }>(gw.client, 'SendMessages', {
          producer_id: producerId,
          messages: Array.from({ length: 500 }, (_, j) => ({ message_body: `m-${i + j}` })),
        });
        assert.equal(r.success, true);
      }
      await eventually(() => acked === N, `${N} deliveries acked`, 20_000);
    } finally {
      clearInterval(collect);
      s.end();
    }
    assertRandomIds(handles, 'receipt handle');
    for (const h of handles) assert.ok(!messageIds.has(h), 'a receipt handle is a message id');
    await call(gw.client, 'CleanupConsumer', { consumer_id: consumerId });
    await call(gw.client, 'CleanupProducer', { producer_id: producerId });
    await ownerUnaffected();
  });

  test('1,000 transaction ids are distinct v4 UUIDs, never the message id nor derived from it', async () => {
    const txs: Array<{ transaction_id: string; message_id: string }> = [];
    for (let i = 0; i < N; i += 50) {
      txs.push(
        ...(await Promise.all(
          Array.from({ length: 50 }, () =>
            call<{ transaction_id: string; message_id: string }>(gw.client, 'SendTransactionMessage', {
              producer_id: owner,
              message_body: 'half',
              trans_check_immunity_time: 600,
            }),
          ),
        )),
      );
    }
    assertRandomIds(
      txs.map((t) => t.transaction_id),
      'transaction id',
    );
    const messageIds = new Set(txs.map((t) => t.message_id));
    for (const t of txs) {
      assert.notEqual(t.transaction_id, t.message_id);
      assert.ok(!messageIds.has(t.transaction_id), 'a transaction id is some message id');
      const digits = t.message_id.replace(/[^0-9a-f]/gi, '').toLowerCase();
      assert.ok(
        !t.transaction_id.replace(/-/g, '').includes(digits.slice(-12)),
        `transaction id ${t.transaction_id} contains its message id ${t.message_id}`,
      );
    }
    assert.equal(await gauge(gw.metricsUrl, 'pending_transactions'), N);
    for (const t of txs)
      await call(gw.client, 'EndTransaction', { transaction_id: t.transaction_id, commit: false });
    assert.equal(await gauge(gw.metricsUrl, 'pending_transactions'), 0);
    await ownerUnaffected();
  });

  test('the owner still works, the gateway is healthy, and closing it returns every handle to the baseline', async () => {
    await ownerUnaffected();
    ownerStream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
