/**
 * Plain HTTP(S) downloads for the archive client. Integrity never depends on the transport: every
 * byte is checked against a signed InRelease or a lock file, so Debian's plain-HTTP mirrors are fine.
 * Failures a user can cause (unreachable mirror, missing file) become one-line EdgekitErrors with the URL.
 */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { EdgekitError } from '../util/errors.js';

export type Progress = (done: number, total: number | undefined) => void;

function networkError(url: string, err: unknown): EdgekitError {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  const why = cause?.code ?? cause?.message ?? (err as Error).message;
  return new EdgekitError(`cannot reach ${url}: ${why}`);
}

async function get(url: string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url, { redirect: 'follow' });
  } catch (err) {
    throw networkError(url, err);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw new EdgekitError(`${url}: HTTP ${res.status} ${res.statusText}`.trim());
  }
  return res;
}

export async function fetchBuffer(url: string): Promise<Buffer> {
  const res = await get(url);
  try {
    return Buffer.from(await res.arrayBuffer());
  } catch (err) {
    throw networkError(url, err);
  }
}

/** Streams `url` into `path`, returning the sha256 and size of what was written. */
export async function downloadTo(
  url: string,
  path: string,
  onProgress?: Progress,
): Promise<{ sha256: string; size: number }> {
  const res = await get(url);
  const totalHeader = res.headers.get('content-length');
  const total = totalHeader ? Number(totalHeader) : undefined;
  const hash = createHash('sha256');
  let size = 0;
  const body = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
  body.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    size += chunk.length;
    onProgress?.(size, total);
  });
  try {
    await pipeline(body, createWriteStream(path));
  } catch (err) {
    throw networkError(url, err);
  }
  return { sha256: hash.digest('hex'), size };
}
