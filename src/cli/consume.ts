import { Command } from 'commander';
import type { ReceivedMessage } from '../client/index.js';
import {
  addConnectionOptions,
  type ConnectionFlags,
  clientFrom,
  onStopSignal,
  Progress,
  parsePositiveInt,
  writeOut,
} from './common.js';

interface ConsumeFlags extends ConnectionFlags {
  topic: string;
  group: string;
  tag: string;
  json?: boolean;
  count?: string;
  quiet?: boolean;
}

/** `mqgate consume`: prints each message (body, or a JSON line with --json), then acks it. */
export function consumeCommand(): Command {
  const cmd = new Command('consume')
    .description('Consume a topic as a consumer group: print each message, then ack it. Ctrl-C stops.')
    .requiredOption('--topic <topic>', 'topic to consume')
    .requiredOption('--group <group>', 'consumer group')
    .option('--tag <expression>', "tag expression, e.g. '*' or 'a||b'", '*')
    .option('--json', 'print one JSON object per message (id, topic, tag, properties, body, ...)')
    .option('--count <n>', 'exit after n messages')
    .option('--quiet', 'no status line on stderr');
  addConnectionOptions(cmd);
  cmd.action(async (flags: ConsumeFlags) => {
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
      const consumer = await client.getConsumer(flags.instanceId, flags.topic, flags.group, flags.tag, {
        signal: stop.signal,
        prefetch: 256,
      });
      if (!flags.quiet) {
        process.stderr.write(
          `consuming topic "${flags.topic}" as group "${flags.group}" (tags ${flags.tag}) from ${flags.grpc}\n`,
        );
      }
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
