/**
 * A round-robin TCP load balancer on 127.0.0.1: each new connection goes to the next backend. With
 * clients that open a connection per request, consecutive requests of one device land on different
 * servers, as behind a real balancer without session affinity.
 */
import { connect, createServer, type Socket } from 'node:net';

export interface Balancer {
  url: string;
  /** Connections handed to each backend so far. */
  counts: number[];
  close(): Promise<void>;
}

export async function startBalancer(backends: string[]): Promise<Balancer> {
  const targets = backends.map((b) => new URL(b));
  const counts = targets.map(() => 0);
  const open = new Set<Socket>();
  let next = 0;
  const server = createServer((client) => {
    const i = next++ % targets.length;
    counts[i]++;
    const upstream = connect(Number(targets[i].port), targets[i].hostname);
    for (const s of [client, upstream]) {
      open.add(s);
      s.once('close', () => open.delete(s));
    }
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    counts,
    close: () => new Promise((resolve) => {
      for (const s of open) s.destroy();
      server.close(() => resolve());
    }),
  };
}
