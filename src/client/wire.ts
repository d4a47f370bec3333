/**
 * The SDK's names for the wire messages, generated from the proto into src/wire/ by `npm run gen:wire` (build and typecheck run it)
 * with the loader options the client uses (keepCase, int64 as strings, defaults filled in). What
 * the client sends is the permissive input shape (an int64 may be a number or a string); what it
 * receives is the loader's output shape.
 */
import type { CreateConsumerResponse__Output } from '../wire/rocketmq/CreateConsumerResponse.js';
import type { CreateProducerResponse__Output } from '../wire/rocketmq/CreateProducerResponse.js';
import type { HealthCheckResponse__Output } from '../wire/rocketmq/HealthCheckResponse.js';
import type { MessageProperties } from '../wire/rocketmq/MessageProperties.js';
import type { SendMessageResponse__Output } from '../wire/rocketmq/SendMessageResponse.js';
import type { SendTransactionMessageResponse__Output } from '../wire/rocketmq/SendTransactionMessageResponse.js';

// Deliveries and stream frames are the same shape on both sides; the import is type-only, so no
// gateway code loads.
export type {
  WireHandleFailure,
  WireMessage,
  WirePublishEntry,
  WirePublishRequest,
  WirePublishResponse,
  WirePublishResult,
  WireSubscribeRequest,
  WireSubscribeResponse,
} from '../gateway/wire.js';

/** Message properties as the client sends them: start_deliver_time in epoch ms, number or string. */
export type WireProperties = Omit<MessageProperties, 'start_deliver_time'> & {
  start_deliver_time?: string | number;
};

/** The Send RPCs answer with a message id; SendTransactionMessage adds the transaction id. */
export type WireSendResponse = Partial<SendMessageResponse__Output & SendTransactionMessageResponse__Output>;

export type WireCreateProducerResponse = Partial<CreateProducerResponse__Output>;

export type WireCreateConsumerResponse = Partial<CreateConsumerResponse__Output>;

export type WireHealthResponse = Partial<HealthCheckResponse__Output>;
