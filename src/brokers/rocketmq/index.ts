/** The RocketMQ 5 adapter (through its gRPC proxy): opened by `rocketmq://` URLs. */
export { openRocketMqBroker } from './broker.js';
export { DEFECTS as ROCKETMQ_LIBRARY_DEFECTS } from './library.js';
