/**
 * cpio "newc" (SVR4, no CRC) writer for initramfs payloads, the format the Linux kernel unpacks
 * at boot (init/initramfs.c). Entries go out in tree order, so every parent precedes its children.
 *
 * Streaming: file contents on disk are read in chunks and the archive (optionally gzipped) is
 * written as it is produced, so memory stays flat whatever the tree's size.
 */
import { createWriteStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { stat } from 'node:fs/promises';
import { Tree, TreeEntry, FileContent, contentSize } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import { writeAtomic } from '../util/atomic.js';

export interface CpioOptions {
  /** Stamped on every entry (SOURCE_DATE_EPOCH). */
  mtime: number;
  compress?: 'gzip' | 'none';
}

const S_IFMT_BITS: Record<TreeEntry['type'], number> = {
  dir: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
  fifo: 0o010000,
};

const READ_CHUNK = 1 << 20;
const MAX_U32 = 0xffffffff;
/** gzip's OS byte for Unix; zlib picks one by build platform, we pin it so output is the same everywhere. */
const GZIP_OS_UNIX = 3;

function hex8(n: number, what: string): string {
  if (!Number.isInteger(n) || n < 0 || n > MAX_U32) throw new EdgekitError(`cpio: ${what} ${n} does not fit in 32 bits`);
  return n.toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

interface HeaderFields {
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  fileSize: number;
  rdevMajor: number;
  rdevMinor: number;
  name: string;
}

/** One newc header plus the NUL-terminated name, padded so the data starts 4-byte aligned. */
export function cpioHeader(h: HeaderFields): Buffer {
  const name = Buffer.from(h.name + '\0');
  const where = h.name;
  const text =
    '070701' +
    hex8(h.ino, `inode of ${where}`) +
    hex8(h.mode, `mode of ${where}`) +
    hex8(h.uid, `uid of ${where}`) +
    hex8(h.gid, `gid of ${where}`) +
    hex8(h.nlink, `link count of ${where}`) +
    hex8(h.mtime, 'mtime') +
    hex8(h.fileSize, `size of ${where}`) +
    hex8(0, 'dev major') +
    hex8(0, 'dev minor') +
    hex8(h.rdevMajor, `device major of ${where}`) +
    hex8(h.rdevMinor, `device minor of ${where}`) +
    hex8(name.length, `name length of ${where}`) +
    hex8(0, 'check');
  const head = Buffer.from(text, 'latin1');
  return Buffer.concat([head, name, Buffer.alloc(pad4(head.length + name.length))]);
}

/** Content chunks of a file, read piecewise from disk; checks the size the tree promised. */
async function* contentChunks(c: FileContent, entryPath: string): AsyncGenerator<Buffer> {
  if (c.kind === 'buffer') {
    if (c.data.length > 0) yield c.data;
    return;
  }
  const fh = await open(c.path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`cpio: cannot read ${c.path} (for /${entryPath}): ${err.code ?? err.message}`);
  });
  try {
    let done = 0;
    while (done < c.size) {
      const buf = Buffer.allocUnsafe(Math.min(READ_CHUNK, c.size - done));
      const { bytesRead } = await fh.read(buf, 0, buf.length, done);
      if (bytesRead === 0) break;
      done += bytesRead;
      yield bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
    }
    if (done !== c.size || (await fh.stat()).size !== c.size)
      throw new EdgekitError(`cpio: ${c.path} (for /${entryPath}) changed size while building (expected ${c.size} bytes)`);
  } finally {
    await fh.close();
  }
}

function subdirCounts(tree: Tree): Map<string, number> {
  const counts = new Map<string, number>();
  for (const [dir, kids] of tree.childrenByDir()) counts.set(dir, kids.filter((k) => k.type === 'dir').length);
  return counts;
}

/** The whole uncompressed archive as a stream of chunks. */
async function* cpioStream(tree: Tree, mtime: number): AsyncGenerator<Buffer> {
  const subdirs = subdirCounts(tree);
  let ino = 0;
  for (const e of tree.list()) {
    ino += 1;
    const name = e.path === '' ? '.' : e.path;
    const base = { ino, mode: S_IFMT_BITS[e.type] | (e.mode & 0o7777), uid: e.uid, gid: e.gid, mtime, name };
    switch (e.type) {
      case 'dir':
        yield cpioHeader({ ...base, nlink: 2 + (subdirs.get(e.path) ?? 0), fileSize: 0, rdevMajor: 0, rdevMinor: 0 });
        break;
      case 'file': {
        const size = contentSize(e.content);
        yield cpioHeader({ ...base, nlink: 1, fileSize: size, rdevMajor: 0, rdevMinor: 0 });
        yield* contentChunks(e.content, e.path);
        if (pad4(size)) yield Buffer.alloc(pad4(size));
        break;
      }
      case 'symlink': {
        const target = Buffer.from(e.target);
        yield cpioHeader({ ...base, nlink: 1, fileSize: target.length, rdevMajor: 0, rdevMinor: 0 });
        yield Buffer.concat([target, Buffer.alloc(pad4(target.length))]);
        break;
      }
      case 'char':
      case 'block':
        yield cpioHeader({ ...base, nlink: 1, fileSize: 0, rdevMajor: e.major, rdevMinor: e.minor });
        break;
      case 'fifo':
        yield cpioHeader({ ...base, nlink: 1, fileSize: 0, rdevMajor: 0, rdevMinor: 0 });
        break;
    }
  }
  yield cpioHeader({ ino: 0, mode: 0, uid: 0, gid: 0, nlink: 1, mtime: 0, fileSize: 0, rdevMajor: 0, rdevMinor: 0, name: 'TRAILER!!!' });
}

/** Rewrites the gzip header's OS byte (offset 9) in the first chunk that reaches it. */
function pinGzipOsByte(): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      if (seen <= 9 && seen + chunk.length > 9) {
        chunk = Buffer.from(chunk);
        chunk[9 - seen] = GZIP_OS_UNIX;
      }
      seen += chunk.length;
      cb(null, chunk);
    },
  });
}

/** Writes `tree` as a newc cpio archive (an initramfs) to `outPath`, atomically. */
export async function writeCpio(tree: Tree, outPath: string, opts: CpioOptions): Promise<{ size: number }> {
  hex8(opts.mtime, 'mtime');
  const compress = opts.compress ?? 'none';
  await writeAtomic(outPath, async (tmp) => {
    const source = Readable.from(cpioStream(tree, opts.mtime), { objectMode: false });
    const sink = createWriteStream(tmp, { mode: 0o644 });
    if (compress === 'gzip') await pipeline(source, createGzip({ level: 9 }), pinGzipOsByte(), sink);
    else await pipeline(source, sink);
  });
  return { size: (await stat(outPath)).size };
}
