/**
 * Read-back: every range written is read again from the target, bypassing the page cache
 * (O_DIRECT), and hashed. Reading through the cache would only show what Node handed the kernel,
 * not what the card stored. Where O_DIRECT is refused (tmpfs, whose page cache is the storage) the
 * read goes through the cache and the result says so.
 *
 * It starts only once every range was written and flushed, never overlapped with the writing: a
 * fake-capacity card that wraps its addresses around stores a late range over an early one, and
 * only a read of the early range after the late write shows it. Within the read-back, the next
 * pieces are read while earlier ones are hashed on the worker threads (src/flash/hash-pool.ts).
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { alignUp } from './aligned.js';
import { BufferPool } from './buffer-pool.js';
import type { HashChain, HashPool } from './hash-pool.js';

export interface CheckedRange {
  /** Byte offsets in the image, [start, end). */
  start: number;
  end: number;
  sha256: string;
}

export interface ReadBackResult {
  ok: boolean;
  direct: boolean;
  bytes: number;
  error?: string;
}

const CHUNK = 8 << 20;
/** Buffers per target: reads in flight plus pieces waiting for their hash. */
const RING = 4;
/** Reads queued at once: the device always has the next one when it finishes a read. */
const READS_IN_FLIGHT = 2;

export async function readBack(
  path: string,
  ranges: CheckedRange[],
  opts: { hashes: HashPool; onBytes?: (done: number) => void },
): Promise<ReadBackResult> {
  let fh: FileHandle;
  let direct = true;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EINVAL') return openFailed(path, err);
    direct = false;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      return openFailed(path, e);
    }
  }
  const ring = new BufferPool(RING, CHUNK, { shared: true });
  const pieces: Array<{ range: number; pos: number; len: number; last: boolean }> = [];
  ranges.forEach((r, range) => {
    for (let pos = r.start; pos < r.end; pos += CHUNK) {
      const len = Math.min(CHUNK, r.end - pos);
      pieces.push({ range, pos, len, last: pos + len === r.end });
    }
  });
  type Read = { buf: Buffer; got: number } | { error: unknown };
  const read = async (k: number): Promise<Read> => {
    const buf = await ring.take();
    const { pos, len } = pieces[k];
    try {
      const { bytesRead } = await fh.read(buf, 0, direct ? alignUp(len, 512) : len, pos);
      return { buf, got: bytesRead };
    } catch (error) {
      ring.give(buf);
      return { error };
    }
  };
  // One verdict per range, in range order: the first mismatch is the one reported.
  const verdicts: Array<Promise<string | undefined>> = [];
  let mismatch: string | undefined;
  const window: Array<Promise<Read>> = [];
  let done = 0;
  let next = 0;
  let chain: HashChain | undefined;
  try {
    while (next < pieces.length && window.length < READS_IN_FLIGHT) window.push(read(next++));
    for (let k = 0; k < pieces.length && mismatch === undefined; k++) {
      const r = await window.shift()!;
      if (next < pieces.length) window.push(read(next++));
      const { pos, len, range, last } = pieces[k];
      if ('error' in r) {
        const code = (r.error as NodeJS.ErrnoException).code ?? (r.error as Error).message;
        return { ok: false, direct, bytes: done, error: `${path}: read-back failed at byte ${pos}: ${code}` };
      }
      if (r.got < len) {
        ring.give(r.buf);
        return { ok: false, direct, bytes: done, error: `${path}: read-back ended at byte ${pos + r.got}: the target is shorter than the image` };
      }
      const want = ranges[range];
      chain ??= opts.hashes.chain(want.end - want.start);
      const hashed = chain.update(r.buf.subarray(0, len));
      const give = () => ring.give(r.buf);
      hashed.then(give, give);
      done += len;
      opts.onBytes?.(done);
      if (!last) continue;
      const verdict = Promise.all([hashed, chain.digest()]).then(
        ([, got]) => {
          if (got === want.sha256) return undefined;
          const why = `${path}: read-back mismatch in bytes ${want.start}-${want.end - 1} (blocks ${want.start / 4096}-${Math.ceil(want.end / 4096) - 1}): the target does not hold what was written`;
          mismatch ??= why;
          return why;
        },
        (err: Error) => (mismatch ??= `${path}: read-back could not be checked: ${err.message}`),
      );
      verdicts.push(verdict);
      chain = undefined;
    }
    for (const why of await Promise.all(verdicts)) if (why) return { ok: false, direct, bytes: done, error: why };
    return { ok: true, direct, bytes: done };
  } finally {
    // Reads still queued after a failure finish before the file closes under them.
    await Promise.all(window);
    await fh.close();
  }
}

function openFailed(path: string, err: unknown): ReadBackResult {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  return { ok: false, direct: false, bytes: 0, error: `${path}: cannot open for read-back: ${code}` };
}
