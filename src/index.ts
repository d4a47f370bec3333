/**
 * mqgate's public surface. Named exports only (no `export *`): anything not listed here is
 * internal and may change. The gRPC client SDK lives at `mqgate/client`.
 */

export type {
  Broker,
  BrokerCapabilities,
  BrokerOpenOptions,
  Credentials,
  Delivery,
  HealthStatus,
  NackOptions,
  PreparedTransaction,
  Producer,
  ProducerOptions,
  SendResult,
  StartPosition,
  SubscribeOptions,
  Subscription,
} from './brokers/broker.js';
// Brokers.
export { openBroker } from './brokers/index.js';
export type {
  BackoffOptions,
  BusSubscribeOptions,
  BusSubscription,
  Envelope,
  EnvelopeHandler,
  EnvelopeInit,
  EventBus,
  EventBusHealth,
  EventBusOptions,
  HandlerContext,
  KeyedLanesOptions,
  LaneStats,
  MessageHandler,
  Payload,
  PublishOptions,
} from './bus/index.js';
// The event bus.
export { createEnvelope, createEventBus, KeyedLanes, uuidv7 } from './bus/index.js';
export type { ErrorCode } from './core/errors.js';
export {
  ClosedError,
  ERROR_CODES,
  InvalidArgumentError,
  isMqError,
  MqError,
  NotFoundError,
  ResourceExhaustedError,
  TimeoutError,
  TopicNotFoundError,
  UnavailableError,
  UnsupportedError,
} from './core/errors.js';
export type { Message, OutgoingMessage } from './core/message.js';
// Messages and errors.
export { bodyJson, bodyText, toBytes } from './core/message.js';
export type { GatewayConfig } from './gateway/config.js';
export { loadConfig } from './gateway/config.js';
export type { GatewayOptions } from './gateway/server.js';
// The gateway, for embedding it in a process of your own.
export { Gateway, startGateway } from './gateway/server.js';
