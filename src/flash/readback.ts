/**
 * Read-back: every range written is read again from the target, bypassing the page cache
 * (O_DIRECT), and hashed. Reading through the cache would only show what Node handed the kernel,
 * not what the card stored. Where O_DIRECT is refused (tmpfs, whose page cache is the storage) the
 * read goes through the cache and the result says so.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { alignedBuffers, alignUp } from './aligned.js';

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

export async function readBack(
  path: string,
  ranges: CheckedRange[],
  onBytes?: (done: number) => void,
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
  // Two buffers: the next piece is read while the current one is hashed.
  const bufs = alignedBuffers(2, CHUNK);
  let done = 0;
  try {
    for (const r of ranges) {
      const hash = createHash('sha256');
      const pieces: Array<{ pos: number; len: number }> = [];
      for (let pos = r.start; pos < r.end; pos += CHUNK) pieces.push({ pos, len: Math.min(CHUNK, r.end - pos) });
      const read = (i: number) => {
        const { pos, len } = pieces[i];
        return fh.read(bufs[i % 2], 0, direct ? alignUp(len, 512) : len, pos);
      };
      let pending = pieces.length ? read(0) : undefined;
      for (let i = 0; i < pieces.length; i++) {
        let got: number;
        try {
          got = (await pending!).bytesRead;
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
          return { ok: false, direct, bytes: done, error: `${path}: read-back failed at byte ${pieces[i].pos}: ${code}` };
        }
        pending = i + 1 < pieces.length ? read(i + 1) : undefined;
        const { pos, len } = pieces[i];
        if (got < len) {
          await pending?.catch(() => {});
          return { ok: false, direct, bytes: done, error: `${path}: read-back ended at byte ${pos + got}: the target is shorter than the image` };
        }
        hash.update(bufs[i % 2].subarray(0, len));
        done += len;
        onBytes?.(done);
      }
      const got = hash.digest('hex');
      if (got !== r.sha256) {
        return {
          ok: false,
          direct,
          bytes: done,
          error: `${path}: read-back mismatch in bytes ${r.start}-${r.end - 1} (blocks ${r.start / 4096}-${Math.ceil(r.end / 4096) - 1}): the target does not hold what was written`,
        };
      }
    }
    return { ok: true, direct, bytes: done };
  } finally {
    await fh.close();
  }
}

function openFailed(path: string, err: unknown): ReadBackResult {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  return { ok: false, direct: false, bytes: 0, error: `${path}: cannot open for read-back: ${code}` };
}
