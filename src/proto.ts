import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import protobuf from 'protobufjs';

/**
 * The wire contract, loaded once per process for whoever needs it: the gateway's service, the
 * SDK's client, and the encoders of the hot streaming responses.
 */

/** proto/ ships next to dist/ and src/, one level above this file in both layouts. */
export const PROTO_PATH = fileURLToPath(new URL('../proto/rocketmq_proxy.proto', import.meta.url));

/** How existing clients load the proto: snake_case names, int64 as strings, defaults, oneofs. */
export const PROTO_LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const;

let service: ServiceDefinition | undefined;

/** The RocketMQProxy service definition as @grpc/proto-loader makes it. */
export function serviceDefinition(): ServiceDefinition {
  if (!service) {
    const pkg = loadPackageDefinition(loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS)) as unknown as {
      rocketmq: { RocketMQProxy: { service: ServiceDefinition } };
    };
    service = pkg.rocketmq.RocketMQProxy.service;
  }
  return service;
}

let root: protobuf.Root | undefined;

/**
 * An encoder that writes a plain object straight to bytes. proto-loader's serializer first
 * copies the object into a protobufjs message (fromObject); for objects the gateway builds itself,
 * with the right JS types (strings, numbers, Buffers, arrays, plain maps), that copy is only cost.
 */
export function directEncoder(typeName: string): (value: object) => Buffer {
  root ??= new protobuf.Root().loadSync(PROTO_PATH, { keepCase: true });
  const type = root.lookupType(`rocketmq.${typeName}`);
  return (value) => type.encode(value as protobuf.Message).finish() as Buffer;
}
