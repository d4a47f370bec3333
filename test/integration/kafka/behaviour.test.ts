import { runBrokerBehaviourSuite } from '../../support/behaviour.js';
import { openTestKafka } from './env.js';

// Three partitions so competing subscriptions of one group each own some.
runBrokerBehaviourSuite('kafka', () => openTestKafka('partitions=3'), { timeoutScale: 3 });
