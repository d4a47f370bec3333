export type { ErrorCode } from '../core/errors.js';
export { ClosedError, isMqError, MqError } from '../core/errors.js';
export type { HealthStatus, MQClientOptions } from './client.js';
export { MQClient } from './client.js';
export type { ConsumerOptions, ConsumerStatus, MessageHandler } from './consumer.js';
export { Consumer, StaleReceiptError } from './consumer.js';
export type { MessageBody, PropertiesInput } from './message.js';
export { MessageProperties, ReceivedMessage } from './message.js';
export type {
  DelaySpec,
  SendOptions,
  SendResult,
  TransactionHandle,
  TransactionOptions,
} from './producer.js';
export { Producer } from './producer.js';
export type { BackoffOptions } from './retry.js';
export type { TlsOptions } from './rpc.js';
export { GatewayError } from './rpc.js';
export type { WireProperties } from './wire.js';
