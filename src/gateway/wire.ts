/**
 * The gateway's names for the wire messages. The shapes are generated from the proto by
 * `npm run gen:wire` into src/wire/ (build and typecheck regenerate them), with the loader options
 * of src/proto.ts: snake_case names, int64 as strings, defaults filled in. A request is the
 * loader's output shape (`__Output`: every field present); what the gateway writes is typed here
 * as it builds it.
 */
import type { AckMessageRequest__Output } from '../wire/rocketmq/AckMessageRequest.js';
import type { AckMessagesRequest__Output } from '../wire/rocketmq/AckMessagesRequest.js';
import type { BatchEntry__Output } from '../wire/rocketmq/BatchEntry.js';
import type { CleanupConsumerRequest__Output } from '../wire/rocketmq/CleanupConsumerRequest.js';
import type { CleanupProducerRequest__Output } from '../wire/rocketmq/CleanupProducerRequest.js';
import type { CreateConsumerRequest__Output } from '../wire/rocketmq/CreateConsumerRequest.js';
import type { CreateProducerRequest__Output } from '../wire/rocketmq/CreateProducerRequest.js';
import type { EndTransactionRequest__Output } from '../wire/rocketmq/EndTransactionRequest.js';
import type { EntryResult__Output } from '../wire/rocketmq/EntryResult.js';
import type { HandleFailure__Output } from '../wire/rocketmq/HandleFailure.js';
import type { Message__Output } from '../wire/rocketmq/Message.js';
import type { MessageProperties__Output } from '../wire/rocketmq/MessageProperties.js';
import type { NackMessageRequest__Output } from '../wire/rocketmq/NackMessageRequest.js';
import type { PublishEntry__Output } from '../wire/rocketmq/PublishEntry.js';
import type { PublishRequest__Output } from '../wire/rocketmq/PublishRequest.js';
import type { PublishResult__Output } from '../wire/rocketmq/PublishResult.js';
import type { SendDelayMessageRequest__Output } from '../wire/rocketmq/SendDelayMessageRequest.js';
import type { SendMessagesRequest__Output } from '../wire/rocketmq/SendMessagesRequest.js';
import type { SendOrderedMessageRequest__Output } from '../wire/rocketmq/SendOrderedMessageRequest.js';
import type { SendTransactionMessageRequest__Output } from '../wire/rocketmq/SendTransactionMessageRequest.js';
import type { SubscribeOpen__Output } from '../wire/rocketmq/SubscribeOpen.js';
import type { SubscribeRequest__Output } from '../wire/rocketmq/SubscribeRequest.js';

/** Fields of a request may still be absent when a handler is called by something other than grpc. */
type Received<T> = Partial<T>;

export type WireProperties = Received<MessageProperties__Output>;

/** One handler serves the four Send RPCs: the union of their fields, each present on some of them. */
export type WireSendRequest = Received<
  Omit<SendOrderedMessageRequest__Output, 'properties'> &
    Omit<SendDelayMessageRequest__Output, 'properties'> &
    Omit<SendTransactionMessageRequest__Output, 'properties'>
> & { properties?: WireProperties | null };

/** CreateProducer and CreateConsumer share their validation. */
export type WireCreateRequest = Received<CreateProducerRequest__Output & CreateConsumerRequest__Output>;

export type WireCleanupRequest = Received<CleanupProducerRequest__Output & CleanupConsumerRequest__Output>;

export type WireAckRequest = Received<AckMessageRequest__Output & NackMessageRequest__Output>;

export type WireEndTransactionRequest = Received<EndTransactionRequest__Output>;

/**
 * A message as the gateway writes it, every field set. born_timestamp is written as a number; a
 * client decoding with longs: String reads it back as a string.
 */
export type WireMessage = Omit<Message__Output, 'born_timestamp'> & { born_timestamp: string | number };

export type WireBatchEntry = Received<Omit<BatchEntry__Output, 'properties'>> & {
  properties?: WireProperties | null;
};

export type WireSendMessagesRequest = Received<Omit<SendMessagesRequest__Output, 'messages'>> & {
  messages?: WireBatchEntry[];
};

export type WireAckMessagesRequest = Received<AckMessagesRequest__Output>;

export type WireEntryResult = EntryResult__Output;

export type WireSubscribeOpen = Received<SubscribeOpen__Output>;

export type WireSubscribeRequest = Received<Omit<SubscribeRequest__Output, 'open' | 'nacks'>> & {
  open?: WireSubscribeOpen | null;
  nacks?: Array<{ receipt_handle?: string; delay_ms?: string }>;
};

export type WireHandleFailure = HandleFailure__Output;

export interface WireSubscribeResponse {
  consumer_id?: string;
  messages?: WireMessage[];
  failures?: WireHandleFailure[];
}

export type WirePublishEntry = Received<Omit<PublishEntry__Output, 'properties'>> & {
  properties?: WireProperties | null;
};

export type WirePublishRequest = Received<Omit<PublishRequest__Output, 'messages'>> & {
  messages?: WirePublishEntry[];
};

/** sequence: the client's, echoed; written as a number when it fits, read back as a string. */
export type WirePublishResult = Omit<PublishResult__Output, 'sequence'> & { sequence: string | number };

export interface WirePublishResponse {
  results: WirePublishResult[];
}
