/**
 * The SDK against a gateway without Subscribe and Publish: a grpc-js proxy in front of a real
 * gateway forwards every legacy RPC (unary calls and ReceiveMessages) and answers UNIMPLEMENTED
 * for the two streams, as an older mqgate or another RocketMQProxy server would. The SDK must
 * publish with unary calls and consume with ReceiveMessages + AckMessage, and leave nothing open.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  type Client,
  credentials,
  loadPackageDefinition,
  Metadata,
  Server,
  ServerCredentials,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
  type ServiceError,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { type ConsumerStatus, MQClient, type ReceivedMessage } from '../../../src/client/index.js';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../../src/gateway/server.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { metric, startTestGateway, uniq, within } from './helpers.js';

type Upstream = Client & Record<string, (...args: unknown[]) => unknown>;

/** Only the caller's token goes upstream; grpc-js sets the rest itself. */
function forwarded(md: Metadata): Metadata {
  const out = new Metadata();
  for (const v of md.get('authorization')) out.add('authorization', v);
  return out;
}

/**
 * A RocketMQProxy server with every RPC but Subscribe and Publish, each forwarded to `target`.
 * grpc-js answers UNIMPLEMENTED for the methods left out.
 */
async function legacyProxy(target: number): Promise<{
  port: number;
  calls: Map<string, number>;
  close(): Promise<void>;
}> {
  const def = loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = loadPackageDefinition(def) as unknown as {
    rocketmq: {
      RocketMQProxy: (new (
        addr: string,
        creds: ReturnType<typeof credentials.createInsecure>,
        options?: object,
      ) => Upstream) & { service: ServiceDefinition };
    };
  };
  const Ctor = pkg.rocketmq.RocketMQProxy;
  const upstream = new Ctor(`127.0.0.1:${target}`, credentials.createInsecure(), {
    'grpc.use_local_subchannel_pool': 1,
  });
  const calls = new Map<string, number>();
  const count = (m: string): void => {
    calls.set(m, (calls.get(m) ?? 0) + 1);
  };
  const impl: UntypedServiceImplementation = {};
  for (const [name, method] of Object.entries(Ctor.service)) {
    if (name === 'Subscribe' || name === 'Publish') continue;
    if (method.responseStream) {
      impl[name] = (call: ServerWritableStream<object, object>) => {
        count(name);
        const up = (
          upstream[name] as (req: object, md: Metadata) => NodeJS.EventEmitter & { cancel(): void }
        ).call(upstream, call.request, forwarded(call.metadata));
        up.on('data', (m: object) => call.write(m));
        up.on('end', () => call.end());
        up.on('error', (e: ServiceError) => call.emit('error', { code: e.code, details: e.details }));
        call.on('cancelled', () => up.cancel());
      };
    } else {
      impl[name] = (call: ServerUnaryCall<object, object>, cb: sendUnaryData<object>) => {
        count(name);
        (
          upstream[name] as (
            req: object,
            md: Metadata,
            cb: (err: ServiceError | null, res?: object) => void,
          ) => void
        ).call(upstream, call.request, forwarded(call.metadata), (err, res) =>
          err ? cb({ code: err.code, details: err.details }) : cb(null, res),
        );
      };
    }
  }
  const server = new Server();
  server.addService(Ctor.service, impl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    port,
    calls,
    async close() {
      upstream.close();
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
    },
  };
}

test('against a gateway without Subscribe and Publish the SDK publishes with unary calls, consumes with ReceiveMessages, acks count, and close leaves no handle', async () => {
  await withLeakCheck(async () => {
    const gateway = await startTestGateway();
    const proxy = await legacyProxy(gateway.grpcPort);
    const client = new MQClient({ grpcEndpoint: `127.0.0.1:${proxy.port}` });
    try {
      const topic = uniq('t');
      const consumer = await client.getConsumer('', topic, uniq('g'), '*', { prefetch: 16 });
      const statuses: ConsumerStatus[] = [];
      consumer.on('status', (s) => statuses.push(s));
      const producer = await client.getProducer('', topic);
      assert.equal(producer.streaming, true, 'before the first send the producer expects the stream');
      const first = await producer.publishMessage('first');
      assert.match(first.messageId, /\S/);
      assert.equal(producer.streaming, false, 'UNIMPLEMENTED Publish: the producer fell back to unary sends');
      assert.equal(proxy.calls.get('SendMessage'), 1, 'the first send went out as SendMessage');

      const N = 200;
      const bodies = Array.from({ length: N }, (_, i) => `m${i}`);
      // Concurrent sends, keyed and not, all as unary calls now.
      await Promise.all(
        bodies.map((b, i) =>
          i % 2 === 0
            ? producer.publishMessage(b)
            : producer.publishOrderedMessage(b, undefined, undefined, `k${i % 5}`),
        ),
      );
      assert.equal(proxy.calls.get('SendMessage'), 1 + N / 2);
      assert.equal(proxy.calls.get('SendOrderedMessage'), N / 2);

      const got: ReceivedMessage[] = [];
      const it = consumer[Symbol.asyncIterator]();
      while (got.length < N + 1) {
        const r = await within(it.next(), 10_000, `message ${got.length + 1}`);
        assert.equal(r.done, false);
        got.push(r.value as ReceivedMessage);
        await (r.value as ReceivedMessage).ack();
      }
      assert.deepEqual(got.map((m) => m.body).sort(), ['first', ...bodies].sort());
      assert.equal(proxy.calls.get('ReceiveMessages'), 1, 'one ReceiveMessages stream');
      assert.equal(proxy.calls.get('AckMessage'), N + 1, 'one AckMessage per ack');
      await eventually(() => metric(gateway, 'messages_acked') === N + 1, 'every ack counted on the gateway');
      assert.equal(metric(gateway, 'inflight_deliveries'), 0);
      assert.deepEqual(
        statuses.filter((s) => s.type !== 'closed').map((s) => s.type),
        [],
        'the fallback is not a disconnect',
      );
      // A transaction and its commit go the unary way too.
      const tx = await producer.publishTransactionMessage('tx');
      await tx.commit();
      assert.equal(proxy.calls.get('SendTransactionMessage'), 1);
      const m = await within(it.next(), 10_000, 'the committed transaction message');
      assert.equal((m.value as ReceivedMessage).body, 'tx');
      await (m.value as ReceivedMessage).ack();

      await consumer.close();
      await producer.close();
      assert.equal(metric(gateway, 'active_consumers'), 0);
      assert.equal(metric(gateway, 'producer_handles'), 0);
      assert.equal(metric(gateway, 'active_streams'), 0);
    } finally {
      await client.close();
      await proxy.close();
      await gateway.close();
    }
  });
});
