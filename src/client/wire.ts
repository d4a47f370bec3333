/** Wire shapes as @grpc/proto-loader produces and accepts them (keepCase, int64 as strings). */

export interface WireProperties {
  properties?: Record<string, string>;
  message_key?: string;
  sharding_key?: string;
  start_deliver_time?: string | number;
  trans_check_immunity_time?: number;
}

export interface WireMessage {
  message_id: string;
  receipt_handle: string;
  message_body: string;
  tag: string;
  properties: Record<string, string>;
  born_timestamp: string;
  reconsume_times: number;
  topic: string;
  message_body_bytes: Buffer;
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
