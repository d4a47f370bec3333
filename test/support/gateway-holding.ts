/**
 * The original client's flow through the gateway, all on one topic: SendMessage,
 * SendOrderedMessage, SendDelayMessage by time and by level, SendTransactionMessage committed,
 * rolled back, and (where the broker's holding keeps it: Kafka, NATS) left undecided while its
 * gateway stops; the next gateway on the same broker delivers the undecided one at its immunity
 * time. On RocketMQ the topic is a MIXED one.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { call, receive, startTestGateway } from './gateway.js';
import { eventually, withLeakCheck } from './leaks.js';

const keys = { endpoint: '', access_key_id: '', access_key_secret: '', instance_id: 'i' };

export async function runGatewayHolding(options: {
  brokerUrl: string;
  timeoutScale?: number;
  /** A topic and group made for the broker (default: fresh names the broker creates itself). */
  topic?: string;
  group?: string;
  /** Where the group starts ('' for the broker's own setting); default earliest. */
  start?: string;
  /** Leave a transaction undecided across a gateway restart (default true). */
  undecidedAcrossRestart?: boolean;
}): Promise<void> {
  const scale = options.timeoutScale ?? 1;
  const topic = options.topic ?? `gwhold-${randomUUID().slice(0, 8)}`;
  const group = options.group ?? `gwhold-${randomUUID().slice(0, 8)}`;
  const start = options.start ?? 'earliest';
  const restart = options.undecidedAcrossRestart ?? true;
  const brokers = [{ url: options.brokerUrl, endpoints: [] }];
  await withLeakCheck(async () => {
    const immunitySeconds = 4 * scale;
    let undecidedId = '';
    let rolledBackId = '';
    let deadline = 0;
    const first = await startTestGateway({ brokers });
    try {
      const { consumer_id } = await call<{ consumer_id: string }>(first.client, 'CreateConsumer', {
        ...keys,
        topic,
        group_id: group,
        start,
      });
      const stream = receive(first.client, consumer_id);
      const { producer_id } = await call<{ producer_id: string }>(first.client, 'CreateProducer', {
        ...keys,
        topic,
      });
      // The original client's flow on one topic: normal, ordered, delayed, transactional.
      await call(first.client, 'SendMessage', { producer_id, message_body: 'normal' });
      for (let i = 0; i < 3; i++) {
        await call(first.client, 'SendOrderedMessage', {
          producer_id,
          message_body: `ordered ${i}`,
          sharding_key: 'order-1',
        });
      }
      const t0 = Date.now();
      const at = await call<{ message_id: string }>(first.client, 'SendDelayMessage', {
        producer_id,
        message_body: 'at a time',
        start_deliver_time: String(t0 + 1_500),
      });
      await call(first.client, 'SendDelayMessage', {
        producer_id,
        message_body: 'level 1',
        delay_time_level: '1',
      });
      const committed = await call<{ transaction_id: string; message_id: string }>(
        first.client,
        'SendTransactionMessage',
        {
          producer_id,
          message_body: 'committed',
          trans_check_immunity_time: 600,
        },
      );
      const rolledBack = await call<{ transaction_id: string; message_id: string }>(
        first.client,
        'SendTransactionMessage',
        { producer_id, message_body: 'rolled back', trans_check_immunity_time: immunitySeconds },
      );
      deadline = Date.now() + immunitySeconds * 1000;
      if (restart) {
        const undecided = await call<{ message_id: string }>(first.client, 'SendTransactionMessage', {
          producer_id,
          message_body: 'undecided',
          trans_check_immunity_time: immunitySeconds,
        });
        undecidedId = undecided.message_id;
      }
      rolledBackId = rolledBack.message_id;
      await call(first.client, 'EndTransaction', { transaction_id: committed.transaction_id, commit: true });
      await call(first.client, 'EndTransaction', {
        transaction_id: rolledBack.transaction_id,
        commit: false,
      });
      // A sharding key's next message comes once the previous one is acked: ack as they arrive.
      let acked = 0;
      await eventually(
        async () => {
          while (acked < stream.messages.length) {
            const m = stream.messages[acked++];
            if (m) await call(first.client, 'AckMessage', { consumer_id, receipt_handle: m.receipt_handle });
          }
          return new Set(stream.messages.map((m) => m.message_body)).size >= 7;
        },
        'the normal, ordered, delayed and committed messages',
        20_000 * scale,
      );
      const byBody = new Map(stream.messages.map((m) => [m.message_body, m]));
      assert.deepEqual([...byBody.keys()].sort(), [
        'at a time',
        'committed',
        'level 1',
        'normal',
        'ordered 0',
        'ordered 1',
        'ordered 2',
      ]);
      assert.deepEqual(
        stream.messages.map((m) => m.message_body).filter((b) => b.startsWith('ordered')),
        ['ordered 0', 'ordered 1', 'ordered 2'],
        'ordered messages of one sharding key in order',
      );
      assert.equal(byBody.get('at a time')?.message_id, at.message_id, 'the delayed message keeps its id');
      assert.equal(
        byBody.get('committed')?.message_id,
        committed.message_id,
        'the committed message keeps its id',
      );
      assert.ok(Date.now() >= t0 + 1_500, 'not delivered before its time');
      stream.end();
      assert.ok(
        !restart || Date.now() < deadline,
        'the first gateway stops before the immunity deadline (test too slow)',
      );
    } finally {
      await first.close();
    }
    if (!restart) return;
    const second = await startTestGateway({ brokers });
    try {
      const { consumer_id } = await call<{ consumer_id: string }>(second.client, 'CreateConsumer', {
        ...keys,
        topic,
        group_id: group,
        start,
      });
      const stream = receive(second.client, consumer_id);
      await eventually(
        () => stream.messages.some((m) => m.message_id === undecidedId),
        'the undecided transaction, committed at its immunity time by the next gateway',
        immunitySeconds * 1000 + 30_000 * scale,
      );
      const got = stream.messages.find((m) => m.message_id === undecidedId);
      assert.equal(got?.message_body, 'undecided');
      assert.ok(Date.now() >= deadline, 'not committed before its immunity deadline');
      assert.ok(
        !stream.messages.some((m) => m.message_id === rolledBackId),
        'the rolled-back message is never delivered',
      );
      stream.end();
    } finally {
      await second.close();
    }
  });
}
