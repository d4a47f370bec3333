import { Command } from 'commander';
import { isMqError } from '../client/index.js';
import { parseDuration } from '../core/duration.js';
import { addConnectionOptions, type ConnectionFlags, clientFrom } from './common.js';

interface HealthFlags extends ConnectionFlags {
  timeout: string;
}

/** `mqgate health`: exit 0 when the gateway and its brokers are healthy, 1 otherwise. */
export function healthCommand(): Command {
  const cmd = new Command('health')
    .description('Ask a gateway whether it and its brokers are healthy (exit 0 healthy, 1 not).')
    .option('--timeout <duration>', 'how long to wait for the answer', '5s');
  addConnectionOptions(cmd);
  cmd.action(async (flags: HealthFlags) => {
    const timeoutMs = parseDuration(flags.timeout, '--timeout');
    const client = clientFrom(flags);
    try {
      const h = await client.healthCheck({ timeoutMs });
      console.log(`${h.healthy ? 'healthy' : 'unhealthy'}: ${h.message}`);
      if (!h.healthy) process.exitCode = 1;
    } catch (err) {
      console.log(`unreachable: ${isMqError(err) ? err.message : String(err)}`);
      process.exitCode = 1;
    } finally {
      await client.close();
    }
  });
  return cmd;
}
