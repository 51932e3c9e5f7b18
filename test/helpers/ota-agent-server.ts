/**
 * A release server for the agent's tests: serves a repository folder with HTTP byte ranges, takes
 * the agent's reports (POST /reports), and can drop a download part way (to test resuming).
 */
import { createServer, type Server } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join, normalize } from 'node:path';

export interface AgentServer {
  url: string;
  port: number;
  reports: Array<Record<string, unknown>>;
  /** Requests as `GET /path bytes=N-` lines. */
  requests: string[];
  /** Close the connection after sending this many body bytes of a matching path (once per call). */
  dropAfter(pathPart: string, bytes: number, times?: number): void;
  /** Send this many body bytes of a matching path, then nothing more (the connection stays open). */
  stallAfter(pathPart: string, bytes: number): void;
  close(): Promise<void>;
}

export async function startAgentServer(dir: string, opts: { port?: number; host?: string } = {}): Promise<AgentServer> {
  const drops: Array<{ pathPart: string; bytes: number; times: number; stall?: boolean }> = [];
  const state = { url: '', port: 0, reports: [] as Array<Record<string, unknown>>, requests: [] as string[] };
  const server: Server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    if (req.method === 'POST' && path === '/reports') {
      let body = '';
      for await (const c of req) body += c;
      state.reports.push(JSON.parse(body));
      res.writeHead(204).end();
      return;
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    state.requests.push(`${req.method} ${path}${range ? ` bytes=${range[1]}-` : ''}`);
    const file = await readFile(join(dir, normalize(path))).catch(() => undefined);
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    const start = range ? Number(range[1]) : 0;
    if (start > file.length) {
      res.writeHead(416).end();
      return;
    }
    const body = file.subarray(start);
    const headers = { 'content-length': body.length, 'accept-ranges': 'bytes', ...(range ? { 'content-range': `bytes ${start}-${file.length - 1}/${file.length}` } : {}) };
    res.writeHead(range ? 206 : 200, headers);
    if (req.method === 'HEAD') return void res.end();
    const drop = drops.find((d) => d.times > 0 && path.includes(d.pathPart) && body.length > d.bytes);
    if (drop) {
      drop.times--;
      // Send part of the body, then cut the TCP connection: the client sees a premature close.
      res.write(body.subarray(0, drop.bytes), () => {
        if (!drop.stall) setTimeout(() => res.socket?.destroy(), 20);
      });
      return;
    }
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve));
  const addr = server.address();
  state.port = typeof addr === 'object' && addr ? addr.port : 0;
  state.url = `http://127.0.0.1:${state.port}`;
  return {
    get url() {
      return state.url;
    },
    get port() {
      return state.port;
    },
    reports: state.reports,
    requests: state.requests,
    dropAfter: (pathPart, bytes, times = 1) => drops.push({ pathPart, bytes, times }),
    stallAfter: (pathPart, bytes) => drops.push({ pathPart, bytes, times: 1, stall: true }),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
