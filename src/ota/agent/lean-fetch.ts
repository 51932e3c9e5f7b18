/**
 * A global `fetch` over node:http for the device bundle. tuf-js downloads metadata with the global
 * fetch, and node's own (undici) compiles a WebAssembly HTTP parser on first use: some 30 MiB of
 * the agent's 96 MiB budget. This one covers what tuf-js asks of fetch (GET, headers, an abort
 * signal; `ok`, `status`, a web stream `body`) and nothing more.
 */
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';

interface LeanInit {
  method?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal | null;
}

export async function leanFetch(input: string | URL | { url: string }, init: LeanInit = {}): Promise<Response> {
  const url = new URL(typeof input === 'object' && 'url' in input ? input.url : String(input));
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`fetch: unsupported URL ${url.href}`);
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    const req = request(url, { method: init.method ?? 'GET', headers: init.headers, signal: init.signal ?? undefined }, resolve);
    req.on('error', (err) => reject(new TypeError(`fetch failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err })));
    req.end();
  });
  const status = res.statusCode ?? 0;
  const headers = new Headers();
  for (const [k, v] of Object.entries(res.headers)) if (v !== undefined) headers.set(k, Array.isArray(v) ? v.join(', ') : v);
  return {
    ok: status >= 200 && status < 300,
    status,
    statusText: res.statusMessage ?? '',
    url: url.href,
    headers,
    body: Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>,
  } as unknown as Response;
}

export function installLeanFetch(): void {
  globalThis.fetch = leanFetch as unknown as typeof fetch;
}
