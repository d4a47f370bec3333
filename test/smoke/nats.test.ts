import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { natsUrl } from '../support/brokers.js';
import { withLeakCheck } from '../support/leaks.js';
import { type PrivateNatsServer, startNatsServer } from '../support/nats-server.js';

/** Publishes one message into a fresh JetStream stream, reads it back, deletes the stream. */
async function jetStreamRoundTrip(url: string): Promise<void> {
  const nc = await connect({ servers: url });
  try {
    const id = randomUUID();
    const stream = `smoke-${id}`;
    const subject = `smoke.${id}`;
    const jsm = await jetstreamManager(nc);
    await jsm.streams.add({ name: stream, subjects: [subject], storage: StorageType.File });
    try {
      const js = jetstream(nc);
      const body = `hello ${id} \u00e9\u4e2d`;
      const ack = await js.publish(subject, body, { msgID: id });
      assert.equal(ack.stream, stream);
      const consumer = await js.consumers.get(stream);
      const msg = await consumer.next({ expires: 10_000 });
      assert.ok(msg, 'a message came back');
      assert.equal(msg.subject, subject);
      assert.equal(msg.string(), body);
      assert.equal(msg.seq, ack.seq);
      msg.ack();
    } finally {
      await jsm.streams.delete(stream);
    }
  } finally {
    await nc.close();
  }
}

test('nats smoke: JetStream round trip on the machine NATS', async () => {
  await withLeakCheck(() => jetStreamRoundTrip(natsUrl()));
});

let server: PrivateNatsServer | undefined;
after(async () => {
  await server?.close();
});

test('nats smoke: JetStream round trip on a private nats-server', async () => {
  server = await startNatsServer();
  const url = server.url;
  await withLeakCheck(() => jetStreamRoundTrip(url));
});
