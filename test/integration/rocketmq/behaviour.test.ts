import { runBrokerBehaviourSuite } from '../../support/behaviour.js';
import { makeGroup, openTestBroker, TopicPool } from './helpers.js';

// The suite asks for about a dozen normal topics; one mqadmin run makes them all.
const pool = new TopicPool({ normal: 12, fifo: 1, delay: 1, transaction: 1 });

runBrokerBehaviourSuite('rocketmq', () => openTestBroker(), {
  makeTopic: (kind) => pool.topic(kind),
  makeGroup,
  // Pop redelivery (nack, ack timeout, release on close) goes through the broker's revive
  // service, which takes about 10 s here (longer on a loaded machine); arrivals get 50 s.
  timeoutScale: 5,
  // Below the proxy's 10 s minimum invisible time: exercises the adapter's own ack timeout.
  ackTimeoutMs: 2_000,
});
