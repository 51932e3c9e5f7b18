/** A real `edgekit serve` process on 127.0.0.1 (needs dist/ built), started and stopped by a test. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';

export interface ServerProcess {
  url: string;
  child: ChildProcess;
  /** SIGKILL: no clean shutdown, as a crash would leave it. */
  kill(): Promise<void>;
  stop(): Promise<void>;
}

export async function startServerProcess(db: string, args: string[] = []): Promise<ServerProcess> {
  const child = spawn('node', ['bin/edgekit.js', 'serve', '--db', db, '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening on (https?:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`edgekit serve exited ${code}: ${err}${out}`)));
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    url,
    child,
    kill: async () => {
      child.kill('SIGKILL');
      await exited;
    },
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The first admin token of a SQLite database at its default place, or from `file`. */
export async function adminToken(db: string, file = `${db}.admin-token`): Promise<string> {
  return (await readFile(file, 'utf8')).trim();
}

export async function api(url: string, token: string | null, method: string, path: string, body?: unknown, rawBody?: string): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined || rawBody !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(new URL(path, url), { method, headers, body: rawBody ?? (body !== undefined ? JSON.stringify(body) : undefined) });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    /* metrics are text */
  }
  return { status: res.status, body: parsed };
}
