/**
 * Downloads that survive a bad link: a target is read from a byte offset, a connection that drops
 * or stalls is resumed from the last byte received after a capped exponential backoff, and every
 * byte received counts against the update's data budget.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { TargetInfo } from '../repo/index.js';
import { EdgekitError } from '../../util/errors.js';
import { fsyncDir } from '../../util/atomic.js';
import { TransientError, type TargetSource } from './target-source.js';

export interface TransferOptions {
  source: TargetSource;
  /** Attempts per target before giving up (the first one included). */
  attempts: number;
  maxBackoffMs: number;
  /** A connection that delivers nothing for this long is dropped and resumed. */
  stallMs: number;
  /** Called with each received chunk's size before it is used; throws to stop (the data budget). */
  onReceived: (bytes: number) => void;
  /** Called when a transfer is resumed after a failure. */
  onRetry?: (message: string, attempt: number, delayMs: number) => void;
  sleep?: (ms: number) => Promise<void>;
}

const realSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Backoff before attempt n (n >= 2): 1 s, 2 s, 4 s ... capped. */
export function backoffMs(attempt: number, maxMs: number): number {
  return Math.min(maxMs, 1000 * 2 ** (attempt - 2));
}

/** The target's bytes from `start` to its end, resumed across dropped connections. */
export async function* resumableStream(target: TargetInfo, start: number, o: TransferOptions): AsyncGenerator<Buffer> {
  let pos = start;
  let failures = 0;
  while (pos < target.length) {
    const abort = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => abort.abort(new TransientError(`no data for ${o.stallMs / 1000} s`)), o.stallMs);
    };
    try {
      arm();
      const stream = await o.source.openFrom(target, pos, abort.signal);
      try {
        for await (const chunk of stream as AsyncIterable<Buffer>) {
          arm();
          const buf = pos + chunk.length > target.length ? chunk.subarray(0, target.length - pos) : chunk;
          o.onReceived(chunk.length);
          pos += buf.length;
          failures = 0;
          clearTimeout(timer);
          yield buf;
          arm();
          if (pos >= target.length) break;
        }
      } finally {
        stream.destroy();
      }
      if (pos < target.length) throw new TransientError(`connection closed after byte ${pos} of ${target.length}`);
    } catch (err) {
      clearTimeout(timer);
      const transient = err instanceof TransientError || isNetworkError(err) || abort.signal.aborted;
      if (!transient) throw err;
      failures++;
      const message = `${o.source.where}: ${target.path}: ${reasonOf(err, abort.signal)}`;
      if (failures >= o.attempts) throw new EdgekitError(`${message} (gave up after ${o.attempts} attempts)`);
      const delay = backoffMs(failures + 1, o.maxBackoffMs);
      o.onRetry?.(message, failures + 1, delay);
      await (o.sleep ?? realSleep)(delay);
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Downloads a (small) target to `file`, resuming from `file.part` if an earlier run left one;
 * the file appears only when its length and sha256 match the signed ones.
 */
export async function downloadToFile(target: TargetInfo, file: string, o: TransferOptions): Promise<void> {
  if ((await sha256OfFile(file)) === target.sha256) return;
  await mkdir(dirname(file), { recursive: true });
  const part = `${file}.part`;
  let have = (await stat(part).catch(() => undefined))?.size ?? 0;
  if (have > target.length) {
    await rm(part);
    have = 0;
  }
  const fh = await open(part, have ? 'r+' : 'w');
  try {
    let pos = have;
    for await (const chunk of resumableStream(target, have, o)) {
      await fh.write(chunk, 0, chunk.length, pos);
      pos += chunk.length;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  const got = await sha256OfFile(part);
  if (got !== target.sha256) {
    await rm(part, { force: true });
    throw new EdgekitError(`${target.path}: downloaded file has sha256 ${got}, the signed metadata says ${target.sha256}`);
  }
  await rename(part, file);
  await fsyncDir(dirname(file));
}

/** Bytes already downloaded towards `file` (complete or partial). */
export async function bytesPresent(target: TargetInfo, file: string): Promise<number> {
  if ((await sha256OfFile(file)) === target.sha256) return target.length;
  return Math.min(target.length, (await stat(`${file}.part`).catch(() => undefined))?.size ?? 0);
}

export async function sha256OfFile(file: string): Promise<string | undefined> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  } catch {
    return undefined;
  }
  return hash.digest('hex');
}

function isNetworkError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && /^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|ERR_STREAM_PREMATURE_CLOSE|ABORT_ERR|ECONNABORTED)$/.test(code);
}

function reasonOf(err: unknown, signal: AbortSignal): string {
  if (signal.aborted && signal.reason instanceof Error) return signal.reason.message;
  const e = err as NodeJS.ErrnoException;
  return e?.code && !String(e.message).includes(e.code) ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}
