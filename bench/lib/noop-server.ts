/**
 * A no-op RocketMQProxy.SendMessage server, run as its own process by the ceiling bench:
 * `tsx bench/lib/noop-server.ts grpc-js|connect`. It prints `listening <port>` and answers every
 * SendMessage with a constant response the size of the gateway's, so what is left is the cost
 * of the gRPC stack itself.
 *
 * grpc-js: the gateway's server options and the same proto-loader definition.
 * connect: Connect for Node's gRPC protocol on node:http2, with the two messages described in
 * code through @bufbuild/protobuf's runtime reflection (no code generation); it declares only
 * the fields the bench sends, the rest would be skipped as unknown fields.
 */
import { createServer } from 'node:http2';
import { create, createFileRegistry, type DescMethodUnary } from '@bufbuild/protobuf';
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
} from '@bufbuild/protobuf/wkt';
import type { ConnectRouter } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import {
  loadPackageDefinition,
  Server,
  ServerCredentials,
  type ServerWritableStream,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from './load.js';

/** Same length as an embedded-broker message id. */
const MESSAGE_ID = '01a1ff7b689bd62bdc8100000001';
const MAX_MESSAGE_SIZE = 4 * 1024 * 1024;
/** A delivery like the gateway's: 1 KiB body as bytes, a topic, a UUID-long receipt handle. */
const STREAM_MESSAGE = {
  message_id: MESSAGE_ID,
  message_body: '',
  message_body_bytes: Buffer.alloc(1024, 7),
  tag: 'bench',
  properties: {},
  born_timestamp: String(Date.now()),
  reconsume_times: 0,
  topic: 'bench-ceiling',
};
const RECEIPT = '00000000-0000-4000-8000-';

async function grpcJs(): Promise<number> {
  const pkg = loadPackageDefinition(loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS)) as unknown as {
    rocketmq: { RocketMQProxy: { service: ServiceDefinition } };
  };
  const server = new Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_SIZE * 2 + 64 * 1024,
    'grpc.max_send_message_length': MAX_MESSAGE_SIZE * 2 + 64 * 1024,
  });
  server.addService(pkg.rocketmq.RocketMQProxy.service, {
    SendMessage: (_call: unknown, callback: (err: null, res: object) => void) =>
      callback(null, { success: true, message: 'OK', message_id: MESSAGE_ID }),
    // The stream ceiling: `consumer_id: "<n>"` gets n ready-made 1 KiB messages, one per stream
    // message as ReceiveMessages carries them, as fast as flow control lets them go.
    ReceiveMessages: (call: ServerWritableStream<{ consumer_id: string }, object>) => {
      const n = Number(call.request.consumer_id);
      let i = 0;
      const pump = (): void => {
        while (i < n) {
          const ok = call.write({ ...STREAM_MESSAGE, receipt_handle: `${RECEIPT}${i++}` });
          if (!ok) {
            call.once('drain', pump);
            return;
          }
        }
        call.end();
      };
      pump();
    },
  });
  return new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    ),
  );
}

function connectMethod(): DescMethodUnary {
  const T = FieldDescriptorProto_Type;
  const optional = FieldDescriptorProto_Label.OPTIONAL;
  const field = (name: string, number: number, type: FieldDescriptorProto_Type) => ({
    name,
    number,
    type,
    label: optional,
    jsonName: name.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()),
  });
  const file = create(FileDescriptorProtoSchema, {
    name: 'bench_noop.proto',
    package: 'rocketmq',
    syntax: 'proto3',
    messageType: [
      {
        name: 'SendMessageRequest',
        field: [
          field('producer_id', 1, T.STRING),
          field('message_body', 2, T.STRING),
          field('tag', 3, T.STRING),
          field('message_body_bytes', 15, T.BYTES),
        ],
      },
      {
        name: 'SendMessageResponse',
        field: [
          field('success', 1, T.BOOL),
          field('message', 2, T.STRING),
          field('message_id', 3, T.STRING),
          field('receipt_handle', 4, T.STRING),
        ],
      },
    ],
    service: [
      {
        name: 'RocketMQProxy',
        method: [
          {
            name: 'SendMessage',
            inputType: '.rocketmq.SendMessageRequest',
            outputType: '.rocketmq.SendMessageResponse',
          },
        ],
      },
    ],
  });
  const registry = createFileRegistry(file, () => undefined);
  const method = registry.getService('rocketmq.RocketMQProxy')?.methods[0];
  if (method?.methodKind !== 'unary')
    throw new Error('descriptor has no unary rocketmq.RocketMQProxy.SendMessage');
  // Narrowing on methodKind does not reach the generic DescMethodUnary type.
  return method as DescMethodUnary;
}

async function connectNode(): Promise<number> {
  const method = connectMethod();
  const handler = connectNodeAdapter({
    readMaxBytes: MAX_MESSAGE_SIZE * 2 + 64 * 1024,
    routes: (router: ConnectRouter) => {
      router.rpc(method, () => ({ success: true, message: 'OK', messageId: MESSAGE_ID }));
    },
  });
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as { port: number }).port;
}

const mode = process.argv[2];
if (mode !== 'grpc-js' && mode !== 'connect') {
  console.error('usage: tsx bench/lib/noop-server.ts grpc-js|connect');
  process.exit(2);
}
const port = mode === 'grpc-js' ? await grpcJs() : await connectNode();
console.log(`listening ${port}`);
// The parent stops us with SIGTERM; nothing to drain in a no-op server.
process.once('SIGTERM', () => process.exit(0));
