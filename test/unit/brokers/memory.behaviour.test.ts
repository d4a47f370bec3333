import { openMemoryBroker } from '../../../src/brokers/memory/index.js';
import { runBrokerBehaviourSuite } from '../../support/behaviour.js';

runBrokerBehaviourSuite('memory', () => openMemoryBroker(new URL('memory://'), {}), { ackTimeoutMs: 300 });
