/**
 * Synthetic root trees for delta tests: an "old" release and a "new" one that differs the way a
 * point update does (a binary rebuilt with code moved and addresses changed, a config edit, a file
 * added, one removed, one renamed), written with the real squashfs writer plus a dm-verity tree.
 */
import { createHash } from 'node:crypto';
import { openSync, readFileSync, readSync, closeSync, writeFileSync } from 'node:fs';
import { writeSquashfs, type SquashfsOptions } from '../../src/fs/squashfs.js';
import { appendVerityHashTree, type VerityResult } from '../../src/fs/verity.js';
import { Tree } from '../../src/tree/tree.js';

/** Deterministic bytes that look like machine code: repeated instruction-like words with addresses. */
export function fakeBinary(seed: string, size: number): Buffer {
  const out = Buffer.alloc(size);
  let h = createHash('sha256').update(seed).digest();
  for (let i = 0; i < size; i += 4) {
    if (i % 128 === 0) h = createHash('sha256').update(h).digest();
    const word = (0x94000000 | ((i * 7) & 0x3ffffff)) ^ (h[(i >> 2) & 31] << 8);
    out.writeUInt32LE(word >>> 0, i);
  }
  return out;
}

/** The new build of a binary: 300 bytes inserted a third in, every "address" word after it shifted. */
export function rebuiltBinary(old: Buffer): Buffer {
  const cut = Math.floor(old.length / 3) & ~3;
  const moved = Buffer.from(old.subarray(cut));
  for (let i = 0; i + 4 <= moved.length; i += 64) moved.writeUInt32LE((moved.readUInt32LE(i) + 75) >>> 0, i);
  return Buffer.concat([old.subarray(0, cut), fakeBinary('inserted', 300), moved]);
}

export function releaseTrees(): { v1: Tree; v2: Tree } {
  const lib = fakeBinary('libfoo', 900_000);
  const common = (t: Tree) => {
    t.dir('etc');
    t.file('usr/bin/busybox', fakeBinary('busybox', 400_000), 0o755);
    t.symlink('bin', 'usr/bin');
    for (let i = 0; i < 40; i++) t.file(`usr/share/doc/pkg${i}/copyright`, `Copyright ${i}\n`.repeat(20 + i));
    t.file('usr/lib/zeros.bin', Buffer.alloc(300_000));
  };
  const v1 = new Tree();
  common(v1);
  v1.file('usr/lib/libfoo.so.1', lib, 0o755);
  v1.file('etc/app.conf', 'port = 80\nname = old\n');
  v1.file('usr/share/old-only.txt', 'going away\n');
  v1.file('usr/share/data-old-name.bin', fakeBinary('data', 70_000));
  const v2 = new Tree();
  common(v2);
  v2.file('usr/lib/libfoo.so.1', rebuiltBinary(lib), 0o755);
  v2.file('etc/app.conf', 'port = 8080\nname = new\n');
  v2.file('usr/share/new-only.txt', 'arrived\n'.repeat(10));
  v2.file('usr/share/data-new-name.bin', fakeBinary('data', 70_000));
  return { v1, v2 };
}

export interface Payload {
  path: string;
  size: number;
  sha256: string;
  verity: VerityResult;
}

/** Writes a tree as a root payload (squashfs + hash tree), as the builder does. */
export async function writePayload(tree: Tree, path: string, salt: string, opts: Partial<SquashfsOptions> = {}): Promise<Payload> {
  const sq = await writeSquashfs(tree, path, { mtime: 1_700_000_000, compression: 'lz4', ...opts });
  const verity = await appendVerityHashTree(path, { dataSize: sq.size, salt: Buffer.from(salt, 'hex') });
  return { path, size: verity.totalSize, sha256: sha256File(path), verity };
}

export function sha256File(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

/** Copies `path` with one byte flipped at `at`. */
export function flipByte(path: string, out: string, at: number): void {
  const data = readFileSync(path);
  data[at] ^= 0x5a;
  writeFileSync(out, data);
}
