import { redactUrl } from '../brokers/index.js';
import type { Logger } from './log.js';

/** A running OpenTelemetry SDK; shutdown() flushes the spans still buffered. */
export interface Tracing {
  shutdown(): Promise<void>;
}

/**
 * Whether the standard OpenTelemetry variables ask for traces: an exporter named in
 * OTEL_TRACES_EXPORTER (other than none), or an OTLP endpoint. OTEL_SDK_DISABLED=true wins.
 */
export function tracingRequested(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '' && s !== 'none');
  return (
    exporters.length > 0 || !!env.OTEL_EXPORTER_OTLP_ENDPOINT || !!env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
  );
}

/**
 * Starts the OpenTelemetry Node SDK for traces when the environment asks for them, configured by
 * the standard OTEL_* variables (exporter, endpoint, protocol, headers, sampler, resource).
 * Metrics stay on /metrics and logs on stdout: OTEL_METRICS_EXPORTER and OTEL_LOGS_EXPORTER
 * default to none here, where the SDK would otherwise export both over OTLP too. No
 * auto-instrumentation is loaded: the gateway makes its own messaging spans.
 *
 * The SDK is imported only when asked for, so a gateway without tracing does not load it.
 */
export async function startTracing(env: NodeJS.ProcessEnv, log: Logger): Promise<Tracing | undefined> {
  if (!tracingRequested(env)) return undefined;
  env.OTEL_METRICS_EXPORTER ??= 'none';
  env.OTEL_LOGS_EXPORTER ??= 'none';
  env.OTEL_SERVICE_NAME ??= 'mqgate';
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const sdk = new NodeSDK({ instrumentations: [] });
  sdk.start();
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  log.info(
    { exporter: env.OTEL_TRACES_EXPORTER || 'otlp', endpoint: endpoint ? redactUrl(endpoint) : undefined },
    'tracing on',
  );
  return { shutdown: () => sdk.shutdown() };
}
