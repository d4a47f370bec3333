import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Ledger, LedgerEntry } from '../../../../src/brokers/delivery/ledger.js';
import { isMqError } from '../../../../src/core/errors.js';
import type { Message } from '../../../../src/core/message.js';
import { Scheduler } from '../../../../src/core/scheduler.js';
import { eventually } from '../../../support/leaks.js';

class Item extends LedgerEntry {
  readonly message: Message;
  constructor(id: string) {
    super();
    this.message = {
      id,
      topic: 't',
      body: new Uint8Array(),
      key: undefined,
      tag: undefined,
      businessKey: undefined,
      properties: {},
      deliverAt: undefined,
      bornAt: 0,
      reconsumeCount: 0,
    };
  }
}

function ledger(ackTimeoutMs: number, expired: (d: Item) => void = () => {}) {
  const scheduler = new Scheduler();
  const l = new Ledger<Item>({
    scheduler,
    ackTimeoutMs,
    topic: 't',
    group: 'g',
    broker: 'the test',
    expired,
  });
  return { l, scheduler };
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    return isMqError(err) ? err.code : 'not an MqError';
  }
}

test('ledger: a held delivery settles once; a settle after the caller settled is OK (not a nack after an ack), anything else says why', () => {
  const { l, scheduler } = ledger(60_000);
  const a = new Item('a');
  const b = new Item('b');
  assert.equal(
    code(() => l.settle(a, 'ack')),
    'NOT_FOUND',
    'never handed out',
  );
  l.hold(a);
  l.hold(b);
  l.hold(b);
  assert.equal(l.size, 2, 'holding twice counts once');
  assert.equal(l.settle(a, 'ack'), true);
  assert.equal(l.end(a, 'acked'), true);
  assert.equal(l.end(a, 'acked'), false, 'ending twice changes nothing');
  assert.equal(l.settle(a, 'ack'), false, 'a repeated ack is answered OK');
  assert.equal(
    code(() => l.settle(a, 'nack')),
    'FAILED_PRECONDITION',
    'nack after ack',
  );
  l.end(b, 'nacked');
  assert.equal(l.settle(b, 'nack'), false);
  assert.equal(l.settle(b, 'ack'), false, 'ack after nack: OK, the message comes again either way');
  assert.equal(l.size, 0);
  const c = new Item('c');
  l.hold(c);
  l.end(c, 'rewound');
  assert.throws(() => l.settle(c, 'ack'), /message c on topic "t" \(group "g"\).*partition was rewound/);
  scheduler.close();
});

test('ledger: deliveries expire in hand-out order on one scheduler entry; a settled one never expires', async () => {
  const expired: string[] = [];
  const { l, scheduler } = ledger(80, (d) => expired.push(d.message.id));
  const items = ['a', 'b', 'c', 'd'].map((id) => new Item(id));
  for (const d of items) l.hold(d);
  assert.equal(scheduler.size, 1, 'one timer for all of them');
  l.end(items[1] as Item, 'acked');
  await eventually(() => expired.length === 3, 'three expiries');
  assert.deepEqual(expired, ['a', 'c', 'd']);
  assert.equal(l.size, 0);
  assert.equal(
    code(() => l.settle(items[0] as Item, 'ack')),
    'NOT_FOUND',
  );
  assert.throws(() => l.settle(items[0] as Item, 'ack'), /ack timeout \(80 ms\) passed/);
  // Held later: the clock re-arms.
  const e = new Item('e');
  l.hold(e);
  await eventually(() => expired.length === 4, 'the later expiry');
  scheduler.close();
});

test('ledger: an expiry that ends other holds (a Kafka rewind) does not expire them twice', async () => {
  const expired: string[] = [];
  const items = ['a', 'b', 'c'].map((id) => new Item(id));
  const { l, scheduler } = ledger(50, (d) => {
    expired.push(d.message.id);
    l.endAll('rewound');
  });
  const now = Date.now();
  for (const d of items) l.hold(d, now);
  await eventually(() => expired.length > 0, 'the expiry');
  await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(expired, ['a']);
  assert.deepEqual(
    items.map((d) => d.hold),
    ['expired', 'rewound', 'rewound'],
  );
  scheduler.close();
});

test('ledger: endAll gives back what is still held in hand-out order; close stops the clock', async () => {
  const expired: string[] = [];
  const { l, scheduler } = ledger(50, (d) => expired.push(d.message.id));
  const items = ['a', 'b', 'c', 'd'].map((id) => new Item(id));
  for (const d of items) l.hold(d);
  const ended = [items[1], items[3]].map((d) => l.end(d as Item, 'revoked'));
  assert.deepEqual(ended, [true, true]);
  assert.equal(l.size, 2);
  l.close();
  await new Promise((r) => setTimeout(r, 150));
  assert.deepEqual(expired, [], 'no expiry after close');
  const rest = l.endAll('closed');
  assert.deepEqual(
    rest.map((d) => d.message.id),
    ['a', 'c'],
  );
  assert.equal(l.size, 0);
  assert.ok(items.every((d) => !d.held));
  scheduler.close();
});
