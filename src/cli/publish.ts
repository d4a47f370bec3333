import { createInterface } from 'node:readline';
import { Command, Option } from 'commander';
import { MessageProperties, type Producer, type SendResult } from '../client/index.js';
import { parseDuration } from '../core/duration.js';
import {
  addConnectionOptions,
  type ConnectionFlags,
  clientFrom,
  onStopSignal,
  Progress,
  requireFlag,
  writeOut,
} from './common.js';

interface PublishFlags extends ConnectionFlags {
  topic?: string;
  tag?: string;
  key?: string;
  shardingKey?: string;
  delay?: string;
  property: string[];
  body?: string;
}

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/** stdin lines being published at once. */
const IN_FLIGHT = 1000;

/** `mqgate publish`: one message from --body, or one per line of stdin. Prints each message id. */
export function publishCommand(): Command {
  const cmd = new Command('publish')
    .description('Publish --body, or each line of stdin, to a topic through the gateway; prints message ids.')
    // Checked in the action, so that a misspelt option is reported as unknown first.
    .option('--topic <topic>', 'topic to publish to (required)')
    .option('--tag <tag>', 'message tag')
    .option('--key <key>', 'message key (business key for look-ups)')
    .option('--sharding-key <key>', 'ordering key: same key, same order (SendOrderedMessage)')
    .option('--delay <duration>', 'deliver after this long, e.g. 5s, 2m (SendDelayMessage)')
    .option('--property <name=value>', 'user property, repeatable', collect, [])
    .addOption(new Option('--body <text>', 'message body; without it stdin is read, one message per line'));
  addConnectionOptions(cmd);
  cmd.action(async (flags: PublishFlags) => {
    const topic = requireFlag(flags.topic, '--topic <topic>');
    const props = new MessageProperties();
    for (const p of flags.property) {
      const i = p.indexOf('=');
      if (i < 1) throw new Error(`--property "${p}" is not name=value`);
      props.putProperty(p.slice(0, i), p.slice(i + 1));
    }
    if (flags.key) props.messageKey(flags.key);
    const delayMs = flags.delay === undefined ? undefined : parseDuration(flags.delay, '--delay');
    if (delayMs !== undefined && flags.shardingKey) {
      throw new Error('--delay and --sharding-key cannot be combined: a delayed message has no order');
    }

    const client = clientFrom(flags);
    const stop = new AbortController();
    const removeSignals = onStopSignal(() => stop.abort());
    const progress = new Progress('published');
    try {
      const producer = await client.getProducer(flags.instanceId, topic, { signal: stop.signal });
      const send = (body: string): Promise<SendResult> =>
        publishOne(producer, body, flags, props, delayMs, stop.signal);
      if (flags.body !== undefined) {
        await writeOut(`${(await send(flags.body)).messageId}\n`);
        return;
      }
      if (process.stdin.isTTY) {
        process.stderr.write(
          `publishing each line you type to "${topic}"; end with Ctrl-D (or pass --body)\n`,
        );
      }
      const lines = createInterface({ input: process.stdin, crlfDelay: Number.POSITIVE_INFINITY });
      stop.signal.addEventListener('abort', () => lines.close(), { once: true });
      // Up to IN_FLIGHT lines are published at once (they share Publish frames); ids are printed
      // in input order. A failed send stops the run after the sends before it were printed.
      const pending: Array<Promise<SendResult>> = [];
      const printOldest = async (): Promise<void> => {
        const res = await (pending.shift() as Promise<SendResult>);
        progress.tick();
        await writeOut(`${res.messageId}\n`);
      };
      try {
        for await (const line of lines) {
          if (line === '') continue;
          const p = send(line);
          // Failures surface in order through printOldest; this only keeps them from being unhandled.
          p.catch(() => {});
          pending.push(p);
          if (pending.length >= IN_FLIGHT) await printOldest();
        }
        while (pending.length > 0) await printOldest();
        if (progress.count === 0 && !stop.signal.aborted) {
          process.stderr.write(
            'mqgate: stdin had no lines: nothing was published (pass --body, or pipe lines in)\n',
          );
        }
      } finally {
        lines.close();
      }
    } catch (err) {
      // Ctrl-C during a send is a request to stop, not a failure.
      if (!stop.signal.aborted) throw err;
    } finally {
      progress.stop();
      removeSignals();
      await client.close();
    }
  });
  return cmd;
}

function publishOne(
  producer: Producer,
  body: string,
  flags: PublishFlags,
  props: MessageProperties,
  delayMs: number | undefined,
  signal: AbortSignal,
): Promise<SendResult> {
  const options = { signal };
  if (delayMs !== undefined)
    return producer.publishDelayMessage(body, flags.tag, props, { delayMs }, options);
  if (flags.shardingKey)
    return producer.publishOrderedMessage(body, flags.tag, props, flags.shardingKey, options);
  return producer.publishMessage(body, flags.tag, props, options);
}
