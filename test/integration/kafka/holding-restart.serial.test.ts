import { test } from 'node:test';
import { runKafkaHandover } from './holding-handover.js';

test(
  'Kafka: 10,000 delayed messages moved by the next gateway after theirs closed, with Kafka restarted while it moves them',
  { timeout: 600_000 },
  (t) => runKafkaHandover(t, { holdingTopics: '__mqgate_test_hold_restart', restartKafkaAfter: 3_000 }),
);
