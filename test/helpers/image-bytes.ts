import { closeSync, openSync, readSync, writeSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

/** Copies a byte range of an image to its own file (for fsck.vfat, unsquashfs, veritysetup). */
export function extractRange(image: string, offset: number, size: number, out: string): string {
  const fd = openSync(image, 'r');
  const buf = Buffer.alloc(size);
  try {
    readSync(fd, buf, 0, size, offset);
  } finally {
    closeSync(fd);
  }
  writeFileSync(out, buf);
  return out;
}

export function flipByte(path: string, offset: number): void {
  const fd = openSync(path, 'r+');
  try {
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, offset);
    b[0] ^= 0xff;
    writeSync(fd, b, 0, 1, offset);
  } finally {
    closeSync(fd);
  }
}

/** Counts the non-zero 4 KiB blocks of a file by reading it: independent of any block map. */
export function nonZeroBlocks(path: string): number {
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(4 << 20);
  const zero = Buffer.alloc(4096);
  let count = 0;
  try {
    for (let pos = 0; ; pos += buf.length) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      for (let o = 0; o < n; o += 4096) {
        const len = Math.min(4096, n - o);
        if (buf.compare(zero, 0, len, o, o + len) !== 0) count++;
      }
    }
  } finally {
    closeSync(fd);
  }
  return count;
}

export function sh(cmd: string, args: string[], opts: { input?: Buffer | string; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, input: opts.input, env: { ...process.env, ...opts.env } });
}
