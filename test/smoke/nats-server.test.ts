import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { test } from 'node:test';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { withLeakCheck } from '../support/leaks.js';
import { startNatsServer } from '../support/nats-server.js';

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

test('startNatsServer: restart keeps the port and the JetStream store; close leaves nothing behind', async () => {
  const server = await withLeakCheck(async () => {
    const s = await startNatsServer();
    try {
      assert.match(s.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
      assert.notEqual(s.port, 4222);
      const stream = `persist-${s.port}`;
      let nc = await connect({ servers: s.url });
      await (await jetstreamManager(nc)).streams.add({
        name: stream,
        subjects: ['persist.>'],
        storage: StorageType.File,
      });
      await nc.close();

      await s.stop();
      assert.equal(await portOpen(s.port), false, 'port closed while stopped');
      await s.restart();
      assert.equal(await portOpen(s.port), true, 'same port after restart');

      nc = await connect({ servers: s.url });
      const info = await (await jetstreamManager(nc)).streams.info(stream);
      assert.equal(info.config.name, stream, 'the file-backed stream survived the restart');
      await nc.close();
    } finally {
      await s.close();
      await s.close();
    }
    return s;
  });
  assert.equal(existsSync(server.storeDir), false, 'store dir removed');
  assert.equal(await portOpen(server.port), false, 'port closed after close');
});
