import { createHmac, randomUUID } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { ChannelCredentials, Metadata, type ServiceError } from '@grpc/grpc-js';
import definitionPb from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb.js';
import { MessagingServiceClient } from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/service_grpc_pb.js';
import servicePb from 'rocketmq-client-nodejs/proto/apache/rocketmq/v2/service_pb.js';
import { ClosedError } from '../../core/errors.js';
import type { Credentials } from '../broker.js';

export interface TopicRoute {
  readonly topic: string;
  /** Message types the topic's queues accept (definition_pb MessageType values). */
  readonly acceptTypes: ReadonlySet<number>;
}

/** The proxy answered, but not with a route. */
export class RouteStatusError extends Error {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.name = 'RouteStatusError';
    this.code = code;
  }
}

/**
 * The adapter's own gRPC channel to the proxy for route queries: the topic check before a
 * library client is built (the library retries a missing topic three times with sleeps), and
 * health(). Metadata follows docs/transport.md of rocketmq-clients.
 */
export class RouteClient {
  readonly #client: MessagingServiceClient;
  readonly #endpoint: string;
  readonly #namespace: string;
  readonly #timeoutMs: number;
  readonly #clientId = `mqgate@${process.pid}@${randomUUID().slice(0, 8)}`;
  #closed = false;

  constructor(endpoint: string, namespace: string, timeoutMs: number) {
    this.#endpoint = endpoint;
    this.#namespace = namespace;
    this.#timeoutMs = timeoutMs;
    this.#client = new MessagingServiceClient(endpoint, ChannelCredentials.createInsecure());
  }

  #metadata(credentials: Credentials | undefined): Metadata {
    const metadata = new Metadata();
    const dateTime = `${new Date().toISOString().split('.')[0]?.replace(/[-:]/g, '')}Z`;
    metadata.set('x-mq-protocol', 'v2');
    metadata.set('x-mq-client-id', this.#clientId);
    metadata.set('x-mq-date-time', dateTime);
    metadata.set('x-mq-request-id', randomUUID());
    metadata.set('x-mq-language', 'HTTP');
    metadata.set('x-mq-client-version', '5.0.0');
    if (this.#namespace) metadata.set('x-mq-namespace', this.#namespace);
    if (credentials) {
      const signature = createHmac('sha1', credentials.accessKeySecret)
        .update(dateTime)
        .digest('hex')
        .toUpperCase();
      metadata.set(
        'authorization',
        `MQv2-HMAC-SHA1 Credential=${credentials.accessKeyId}, SignedHeaders=x-mq-date-time, Signature=${signature}`,
      );
    }
    return metadata;
  }

  #endpointsPb(): definitionPb.Endpoints {
    const endpoints = new definitionPb.Endpoints();
    const [host = '', port = '0'] = splitHostPort(this.#endpoint);
    endpoints.setScheme(
      isIPv4(host)
        ? definitionPb.AddressScheme.IPV4
        : isIPv6(host)
          ? definitionPb.AddressScheme.IPV6
          : definitionPb.AddressScheme.DOMAIN_NAME,
    );
    endpoints.addAddresses(new definitionPb.Address().setHost(host).setPort(Number(port)));
    return endpoints;
  }

  /** Rejects with RouteStatusError (proxy status) or a gRPC ServiceError (transport). */
  queryRoute(topic: string, credentials: Credentials | undefined): Promise<TopicRoute> {
    if (this.#closed) return Promise.reject(new ClosedError('the RocketMQ broker is closed'));
    const request = new servicePb.QueryRouteRequest()
      .setTopic(new definitionPb.Resource().setName(topic).setResourceNamespace(this.#namespace))
      .setEndpoints(this.#endpointsPb());
    return new Promise((resolve, reject) => {
      this.#client.queryRoute(
        request,
        this.#metadata(credentials),
        { deadline: Date.now() + this.#timeoutMs },
        (err: ServiceError | null, response?: servicePb.QueryRouteResponse) => {
          if (err || !response) {
            reject(err ?? new Error('empty route response'));
            return;
          }
          const status = response.getStatus();
          const code = status?.getCode() ?? definitionPb.Code.OK;
          if (code !== definitionPb.Code.OK) {
            reject(new RouteStatusError(code, status?.getMessage() ?? `code ${code}`));
            return;
          }
          const acceptTypes = new Set<number>();
          for (const mq of response.getMessageQueuesList()) {
            for (const t of mq.getAcceptMessageTypesList()) acceptTypes.add(t);
          }
          resolve({ topic, acceptTypes });
        },
      );
    });
  }

  close(): void {
    this.#closed = true;
    this.#client.close();
  }
}

function splitHostPort(endpoint: string): [string, string] {
  const i = endpoint.lastIndexOf(':');
  return [endpoint.slice(0, i).replace(/^\[(.*)\]$/, '$1'), endpoint.slice(i + 1)];
}
