import { Command } from 'commander';
import { parseStart } from '../brokers/start.js';
import type { ReceivedMessage } from '../client/index.js';
import {
  addConnectionOptions,
  type ConnectionFlags,
  clientFrom,
  onStopSignal,
  Progress,
  parsePositiveInt,
  requireFlag,
  writeOut,
} from './common.js';

interface ConsumeFlags extends ConnectionFlags {
  topic?: string;
  group?: string;
  from?: string;
  tag: string;
  json?: boolean;
  count?: string;
  quiet?: boolean;
}

/** `mqgate consume`: prints each message (body, or a JSON line with --json), then acks it. */
export function consumeCommand(): Command {
  const cmd = new Command('consume')
    .description('Consume a topic as a consumer group: print each message, then ack it. Ctrl-C stops.')
    // Checked in the action: commander reports a missing required option before an unknown one,
    // so a misspelt --topc would read "--topic not specified".
    .option('--topic <topic>', 'topic to consume (required)')
    .option('--group <group>', 'consumer group (required)')
    .option('--tag <expression>', "tag expression, e.g. '*' or 'a||b'", '*')
    .option(
      '--from <position>',
      'where a group seen for the first time starts: latest (the default), earliest, or an ISO-8601 time',
    )
    .option('--json', 'print one JSON object per message (id, topic, tag, properties, body, ...)')
    .option('--count <n>', 'exit after n messages')
    .option('--quiet', 'no status line on stderr');
  addConnectionOptions(cmd);
  cmd.action(async (flags: ConsumeFlags) => {
    const topic = requireFlag(flags.topic, '--topic <topic>');
    const group = requireFlag(flags.group, '--group <group>');
    // Unset unless given: some brokers (RocketMQ) take the start from the group's own settings.
    const start = parseStart(flags.from, '--from');
    const limit =
      flags.count === undefined ? Number.POSITIVE_INFINITY : parsePositiveInt(flags.count, '--count');
    const client = clientFrom(flags);
    const stop = new AbortController();
    const removeSignals = onStopSignal(() => {
      stop.abort();
      // Ends the iteration below; close() also runs in finally, and is idempotent.
      void client.close();
    });
    const progress = new Progress('consumed');
    try {
      const consumer = await client.getConsumer(flags.instanceId, topic, group, flags.tag, {
        signal: stop.signal,
        prefetch: 256,
        start,
      });
      if (!flags.quiet) {
        process.stderr.write(
          `consuming topic "${topic}" as group "${group}" (tags ${flags.tag}, a new group starts at ${flags.from ?? 'latest'}) from ${flags.grpc}\n`,
        );
      }
      // Outages and recoveries on stderr, so a gap in the output is never silent.
      consumer.on('status', (st) => {
        if (flags.quiet) return;
        if (st.type === 'disconnected') process.stderr.write(`mqgate: disconnected: ${st.error.message}\n`);
        else if (st.type === 'reconnecting')
          process.stderr.write(`mqgate: reconnecting (attempt ${st.attempt}, in ${st.delayMs} ms)\n`);
        else if (st.type === 'reconnected') process.stderr.write('mqgate: reconnected\n');
        else if (st.type === 'session-created')
          process.stderr.write(
            'mqgate: reconnected with a new consumer session (the gateway had lost the old one; unacked messages come again)\n',
          );
        else if (st.type === 'ack-lost')
          process.stderr.write(`mqgate: an ack was refused (message ${st.messageId} comes again)\n`);
      });
      consumer.on('error', (err) => process.stderr.write(`mqgate: ${err.message}\n`));
      let n = 0;
      for await (const m of consumer) {
        await writeOut(flags.json ? `${JSON.stringify(toJson(m))}\n` : `${m.body}\n`);
        // Acked once printed; an ack the gateway refuses means the message comes again.
        await m.ack();
        progress.tick();
        if (++n >= limit) break;
      }
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    } finally {
      progress.stop();
      removeSignals();
      await client.close();
    }
  });
  return cmd;
}

function toJson(m: ReceivedMessage): Record<string, unknown> {
  const text = m.bodyBytes.toString('utf8');
  // A body that is not valid UTF-8 would print lossy; base64 keeps it exact.
  const exact = Buffer.from(text, 'utf8').equals(m.bodyBytes);
  return {
    messageId: m.messageId,
    topic: m.topic,
    tag: m.tag,
    properties: m.properties,
    bornTimestamp: m.bornTimestamp,
    reconsumeTimes: m.reconsumeTimes,
    ...(exact ? { body: text } : { bodyBase64: m.bodyBytes.toString('base64') }),
  };
}
