import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { credentials, loadPackageDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { PROTO_PATH } from '../../../src/gateway/server.js';
import { call, type RawClient, startTestGateway, type TestGateway } from '../../support/gateway.js';

let dir: string;
let gw: TestGateway;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mqgate-tls-'));
  // A throw-away self-signed certificate for 127.0.0.1, made by the system's openssl.
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
      '-keyout',
      join(dir, 'key.pem'),
      '-out',
      join(dir, 'cert.pem'),
    ],
    { stdio: 'ignore' },
  );
  // TLS makes a non-loopback address acceptable without --insecure.
  gw = await startTestGateway({
    grpcHost: '0.0.0.0',
    tlsCert: join(dir, 'cert.pem'),
    tlsKey: join(dir, 'key.pem'),
  });
});

after(async () => {
  await gw.close();
  rmSync(dir, { recursive: true, force: true });
});

function tlsClient(): RawClient {
  const pkg = loadPackageDefinition(
    loadSync(PROTO_PATH, { keepCase: true, longs: String, defaults: true }),
  ) as unknown as {
    rocketmq: {
      RocketMQProxy: new (addr: string, creds: ReturnType<typeof credentials.createSsl>) => RawClient;
    };
  };
  return new pkg.rocketmq.RocketMQProxy(
    `127.0.0.1:${gw.gateway.grpcPort}`,
    credentials.createSsl(readFileSync(join(dir, 'cert.pem'))),
  );
}

test('a TLS client trusting the certificate is served', async () => {
  const client = tlsClient();
  try {
    const res = await call<{ healthy: boolean }>(client, 'HealthCheck', {});
    assert.equal(res.healthy, true);
  } finally {
    client.close();
  }
});

test('a plaintext client cannot talk to the TLS port', async () => {
  // gw.client is the helper's insecure client.
  await assert.rejects(call(gw.client, 'HealthCheck', {}), { code: 14 });
});
