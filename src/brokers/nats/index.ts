export { NatsBroker, openNatsBroker } from './broker.js';
export { DEDUP_ID_PROPERTY } from './message.js';
