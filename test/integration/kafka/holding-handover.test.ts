import { test } from 'node:test';
import { runKafkaHandover } from './holding-handover.js';

test(
  'Kafka: 10,000 delayed messages are moved by the next gateway after theirs closed',
  { timeout: 300_000 },
  (t) => runKafkaHandover(t, { holdingTopics: '__mqgate_test_handover' }),
);
