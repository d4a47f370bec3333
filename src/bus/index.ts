export type { Envelope, EnvelopeInit } from './envelope.js';
export { createEnvelope, decodeEnvelope, uuidv7, uuidv7Time, validateEnvelope } from './envelope.js';
export type {
  BackoffOptions,
  BusSubscribeOptions,
  BusSubscription,
  EnvelopeHandler,
  ErrorContext,
  EventBus,
  EventBusHealth,
  EventBusOptions,
  HandlerContext,
  MessageHandler,
  Payload,
  PublishOptions,
  SubscriptionHealth,
  SubscriptionState,
} from './event-bus.js';
export {
  createEventBus,
  PROP_ATTEMPTS,
  PROP_CONTENT_TYPE,
  PROP_ERROR,
  PROP_EVENT_TYPE,
  PROP_ORIGINAL_ID,
  PROP_ORIGINAL_TOPIC,
} from './event-bus.js';
export type {
  CloseLanesOptions,
  KeyedLanesOptions,
  LaneStats,
  LaneTask,
  SubmitOptions,
  SubmittedTask,
} from './lanes.js';
export { hashKey, KeyedLanes } from './lanes.js';
