import type { ServerWritableStream } from '@grpc/grpc-js';
import { callContext } from './calls.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry, DeliverySink } from './consumers.js';
import { wireMessage } from './messages.js';
import type { StatusMapper } from './status.js';
import { cutIfStuck } from './stream-cut.js';
import { requireId } from './validate.js';
import type { WireMessage } from './wire.js';

export interface ReceiveDeps {
  config: GatewayConfig;
  consumers: ConsumerRegistry;
  toStatus: StatusMapper;
  cutConnection(peer: string): void;
  /** Bytes written so far on the connection a call came from. */
  transportBytes(peer: string): number;
}

/**
 * ReceiveMessages, the wire contract's consume stream: one stream message per delivery, acks by
 * unary AckMessage / NackMessage. The session does the work; this adapts the server stream to
 * its DeliverySink.
 */
export function receiveHandler(
  deps: ReceiveDeps,
): (call: ServerWritableStream<{ consumer_id?: string }, WireMessage>) => void {
  const { config, consumers, toStatus } = deps;
  return (call) => {
    let ended = false;
    const fail = (err: unknown): void => {
      if (ended) return;
      ended = true;
      call.emit('error', toStatus(err));
    };
    try {
      const ctx = callContext(call);
      const id = requireId(call.request.consumer_id, 'consumer_id', 'CreateConsumer');
      const sink: DeliverySink = {
        rpc: 'ReceiveMessages',
        // One stream message per delivery (the wire contract); a batch is several writes.
        maxBatch: 16,
        maxBatchBytes: config.streamBufferBytes,
        credit: () => Number.POSITIVE_INFINITY,
        maxInFlight: 0,
        transportBytes: () => deps.transportBytes(ctx.peer),
        write: (batch, flushed) => {
          const last = batch.length - 1;
          for (let i = 0; i < last; i++) {
            const o = batch[i] as (typeof batch)[number];
            call.write(wireMessage(o.message, o.receiptHandle));
          }
          const o = batch[last] as (typeof batch)[number];
          call.write(wireMessage(o.message, o.receiptHandle), flushed);
        },
        end: (error) => {
          if (error) fail(error);
          else if (!ended) {
            ended = true;
            call.end();
          }
        },
        abort: (error) => {
          fail(error);
          cutIfStuck(call, () => deps.cutConnection(ctx.peer));
        },
      };
      const attached = consumers.attach(id, ctx.principal.name, sink);
      // 'cancelled' fires when the client goes away; 'close' covers transport failures.
      const detach = (): void => {
        ended = true;
        attached.detach();
      };
      call.once('cancelled', detach);
      call.once('close', detach);
    } catch (err) {
      fail(err);
    }
  };
}
