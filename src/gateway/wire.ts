/** The wire messages as @grpc/proto-loader hands them over (keepCase, longs as strings). */

export interface WireProperties {
  properties?: Record<string, string>;
  message_key?: string;
  sharding_key?: string;
  start_deliver_time?: string;
  trans_check_immunity_time?: number;
}

export interface WireSendRequest {
  producer_id?: string;
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: WireProperties | null;
  sharding_key?: string;
  delay_time_level?: string;
  start_deliver_time?: string;
  trans_check_immunity_time?: number;
}

export interface WireCreateRequest {
  endpoint?: string;
  access_key_id?: string;
  access_key_secret?: string;
  instance_id?: string;
  topic?: string;
  group_id?: string;
  tag_expression?: string;
  start?: string;
}

export interface WireCleanupRequest {
  producer_id?: string;
  consumer_id?: string;
  group_id?: string;
  topic?: string;
  endpoint?: string;
  access_key_id?: string;
  access_key_secret?: string;
}

export interface WireAckRequest {
  consumer_id?: string;
  receipt_handle?: string;
  delay_ms?: string;
}

export interface WireEndTransactionRequest {
  producer_id?: string;
  transaction_id?: string;
  commit?: boolean;
}

export interface WireMessage {
  message_id: string;
  receipt_handle: string;
  message_body: string;
  tag: string;
  properties: Record<string, string>;
  /** A string when decoded with longs: String; the gateway writes a number. */
  born_timestamp: string | number;
  reconsume_times: number;
  topic: string;
  message_body_bytes: Buffer;
}

export interface WireBatchEntry {
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: WireProperties | null;
  sharding_key?: string;
  start_deliver_time?: string;
}

export interface WireSendMessagesRequest {
  producer_id?: string;
  messages?: WireBatchEntry[];
}

export interface WireAckMessagesRequest {
  consumer_id?: string;
  receipt_handles?: string[];
}

export interface WireEntryResult {
  success: boolean;
  message: string;
  message_id: string;
}

export interface WireSubscribeOpen {
  consumer_id?: string;
  endpoint?: string;
  access_key_id?: string;
  access_key_secret?: string;
  instance_id?: string;
  topic?: string;
  group_id?: string;
  tag_expression?: string;
  start?: string;
  max_in_flight?: number;
  max_batch_messages?: number;
  max_batch_bytes?: number;
}

export interface WireSubscribeRequest {
  open?: WireSubscribeOpen | null;
  credit?: number;
  acks?: string[];
  nacks?: Array<{ receipt_handle?: string; delay_ms?: string }>;
}

export interface WireHandleFailure {
  receipt_handle: string;
  code: string;
  message: string;
}

export interface WireSubscribeResponse {
  consumer_id?: string;
  messages?: WireMessage[];
  failures?: WireHandleFailure[];
}

export interface WirePublishEntry {
  sequence?: string;
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: WireProperties | null;
  sharding_key?: string;
  start_deliver_time?: string;
  delay_time_level?: string;
  transactional?: boolean;
  trans_check_immunity_time?: number;
}

export interface WirePublishRequest {
  producer_id?: string;
  messages?: WirePublishEntry[];
}

export interface WirePublishResult {
  /** A string when decoded with longs: String; the gateway writes a number when it can. */
  sequence: string | number;
  success: boolean;
  code: string;
  message: string;
  message_id: string;
  transaction_id: string;
}

export interface WirePublishResponse {
  results: WirePublishResult[];
}
