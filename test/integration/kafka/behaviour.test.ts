import { runBrokerBehaviourSuite } from '../../support/behaviour.js';
import { openTestKafka } from './env.js';

// Three partitions so competing subscriptions of one group each own some. Holding topics of
// this file's own, so its delayed messages start no movers in other test files' brokers.
runBrokerBehaviourSuite('kafka', () => openTestKafka('partitions=3&holdingTopics=__mqgate_test_behaviour'), {
  timeoutScale: 3,
});
