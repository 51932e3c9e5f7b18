/**
 * A real HTTP server on 127.0.0.1 serving a release repository folder, with a hook that lets a
 * test play a malicious or broken server: replace a file's bytes, answer 404, or send endless data.
 */
import { createServer, type Server } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join, normalize } from 'node:path';

/** What the server sends instead of the file: bytes, a status code, or data that never ends. */
export type Override = Buffer | { status: number } | 'endless' | undefined;

export interface RepoServer {
  url: string;
  /** Paths requested so far ('/metadata/timestamp.json'). */
  requests: string[];
  /** Decide per request; return undefined to serve the real file. */
  override: (path: string, real: Buffer | undefined) => Override;
  close(): Promise<void>;
}

export async function startRepoServer(dir: string): Promise<RepoServer> {
  const state: RepoServer = {
    url: '',
    requests: [],
    override: () => undefined,
    close: async () => {},
  };
  const server: Server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    state.requests.push(path);
    const real = await readFile(join(dir, normalize(path))).catch(() => undefined);
    const o = state.override(path, real);
    if (o === 'endless') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = Buffer.alloc(64 * 1024, 0x7b);
      // Writes as fast as the client reads, until it hangs up.
      const pump = () => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      res.on('close', () => res.off('drain', pump));
      pump();
      return;
    }
    if (o && !Buffer.isBuffer(o)) {
      res.writeHead(o.status).end();
      return;
    }
    const body = o ?? real;
    if (!body) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-length': body.length }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address();
  state.url = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  state.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return state;
}
