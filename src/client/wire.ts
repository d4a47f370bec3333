/** Wire shapes as @grpc/proto-loader produces and accepts them (keepCase, int64 as strings). */

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

export interface WireProperties {
  properties?: Record<string, string>;
  message_key?: string;
  sharding_key?: string;
  start_deliver_time?: string | number;
  trans_check_immunity_time?: number;
}

export interface WireSendResponse {
  message_id?: string;
  receipt_handle?: string;
  transaction_id?: string;
}

export interface WireCreateProducerResponse {
  producer_id?: string;
}

export interface WireCreateConsumerResponse {
  consumer_id?: string;
}

export interface WireHealthResponse {
  healthy?: boolean;
  message?: string;
}
