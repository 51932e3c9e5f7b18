/**
 * dm-verity hash tree (format version 1, sha256), laid out the way `veritysetup format
 * --no-superblock` lays it out, so the kernel's verity target (and veritysetup) accept it.
 *
 * Every block is hashed as sha256(salt || block). Level 0 holds the hashes of the data blocks,
 * each level above the hashes of the level below, packed 128 to a zero-padded 4 KiB hash block,
 * until one block remains; the root hash is the hash of that block. On disk the top level
 * comes first and level 0 last.
 */
import { createHash } from 'node:crypto';
import { open, FileHandle } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';

const BLOCK = 4096;
const DIGEST = 32;
const READ_CHUNK = 1 << 20;

export interface VerityParams {
  /** Hex root hash. */
  rootHash: string;
  /** Hex salt. */
  salt: string;
  dataBlocks: number;
  /** Byte offset of the hash tree, relative to the start of the data. */
  hashOffset: number;
}

export interface VerityResult extends VerityParams {
  /** Data plus hash tree, in bytes: the file's size after appending. */
  totalSize: number;
}

export interface AppendVerityOptions {
  dataSize: number;
  salt: Buffer;
  dataBlockSize?: 4096;
  hashBlockSize?: 4096;
}

/**
 * Number of hash blocks on each level, level 0 first. A single data block needs no tree at all:
 * its own hash is the root (the kernel and veritysetup agree on zero levels then).
 */
export function levelSizes(dataBlocks: number): number[] {
  const perBlock = BLOCK / DIGEST;
  const sizes: number[] = [];
  for (let n = dataBlocks; n > 1; ) {
    n = Math.ceil(n / perBlock);
    sizes.push(n);
  }
  return sizes;
}

function hashBlock(salt: Buffer, block: Buffer): Buffer {
  return createHash('sha256').update(salt).update(block).digest();
}

/** Packs digests into zero-padded hash blocks. */
function packDigests(digests: Buffer[]): Buffer {
  const perBlock = BLOCK / DIGEST;
  const out = Buffer.alloc(Math.ceil(digests.length / perBlock) * BLOCK);
  digests.forEach((d, i) => d.copy(out, i * DIGEST));
  return out;
}

/** Hashes `count` 4 KiB blocks starting at byte `base`, reading in large chunks. */
async function hashDataBlocks(fh: FileHandle, base: number, count: number, salt: Buffer, dataSize: number): Promise<Buffer[]> {
  const digests: Buffer[] = [];
  const buf = Buffer.alloc(READ_CHUNK);
  for (let block = 0; block < count; ) {
    const n = Math.min(READ_CHUNK / BLOCK, count - block);
    const want = n * BLOCK;
    buf.fill(0, 0, want);
    const readable = Math.max(0, Math.min(want, dataSize - block * BLOCK));
    let got = 0;
    while (got < readable) {
      const { bytesRead } = await fh.read(buf, got, readable - got, base + block * BLOCK + got);
      if (bytesRead === 0) throw new EdgekitError(`dm-verity: data ends early at byte ${base + block * BLOCK + got}`);
      got += bytesRead;
    }
    for (let i = 0; i < n; i++) digests.push(hashBlock(salt, buf.subarray(i * BLOCK, (i + 1) * BLOCK)));
    block += n;
  }
  return digests;
}

/** All hash levels (level 0 first) and the root hash, from the data blocks' digests. */
function buildLevels(dataDigests: Buffer[], salt: Buffer): { levels: Buffer[]; root: Buffer } {
  const levels: Buffer[] = [];
  let digests = dataDigests;
  if (digests.length === 1) return { levels, root: digests[0] };
  for (;;) {
    const packed = packDigests(digests);
    levels.push(packed);
    const blocks = packed.length / BLOCK;
    digests = [];
    for (let i = 0; i < blocks; i++) digests.push(hashBlock(salt, packed.subarray(i * BLOCK, (i + 1) * BLOCK)));
    if (blocks === 1) return { levels, root: digests[0] };
  }
}

function checkBlockSizes(o: { dataBlockSize?: number; hashBlockSize?: number }): void {
  if ((o.dataBlockSize ?? BLOCK) !== BLOCK || (o.hashBlockSize ?? BLOCK) !== BLOCK)
    throw new EdgekitError('dm-verity: only 4096-byte data and hash blocks are supported');
}

/**
 * Computes the hash tree over the first `dataSize` bytes of `path` and writes it at
 * `hashOffset` (dataSize rounded up to 4 KiB; any gap is zero-filled), truncating anything after.
 */
export async function appendVerityHashTree(path: string, opts: AppendVerityOptions): Promise<VerityResult> {
  checkBlockSizes(opts);
  if (!Number.isSafeInteger(opts.dataSize) || opts.dataSize <= 0)
    throw new EdgekitError(`dm-verity: data size ${opts.dataSize} of ${path} is not a positive byte count`);
  const dataBlocks = Math.ceil(opts.dataSize / BLOCK);
  const hashOffset = dataBlocks * BLOCK;
  const fh = await open(path, 'r+').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`dm-verity: cannot open ${path}: ${err.code ?? err.message}`);
  });
  try {
    const size = (await fh.stat()).size;
    if (size < opts.dataSize) throw new EdgekitError(`dm-verity: ${path} has ${size} bytes, fewer than the ${opts.dataSize} to protect`);
    const { levels, root } = buildLevels(await hashDataBlocks(fh, 0, dataBlocks, opts.salt, opts.dataSize), opts.salt);
    const tree = Buffer.concat([...levels].reverse());
    await fh.truncate(opts.dataSize);
    if (hashOffset > opts.dataSize) await fh.write(Buffer.alloc(hashOffset - opts.dataSize), 0, hashOffset - opts.dataSize, opts.dataSize);
    await fh.write(tree, 0, tree.length, hashOffset);
    await fh.sync();
    return {
      rootHash: root.toString('hex'),
      salt: opts.salt.toString('hex'),
      dataBlocks,
      hashOffset,
      totalSize: hashOffset + tree.length,
    };
  } finally {
    await fh.close();
  }
}

export interface VerityTableOptions extends Omit<VerityParams, 'hashOffset'> {
  /** Data device (e.g. /dev/mmcblk0p3 or PARTUUID=...), as the consumer of the table names it. */
  dataDevice: string;
  /** Hash device; the data device when the tree is appended to the data. */
  hashDevice?: string;
  /** Byte offset of the hash tree on the hash device. */
  hashOffset: number;
}

/** The device-mapper table line for `dmsetup create --table` (or dm-mod.create=). */
export function verityTable(o: VerityTableOptions): string {
  if (o.hashOffset % BLOCK !== 0) throw new EdgekitError(`dm-verity: hash offset ${o.hashOffset} is not a multiple of ${BLOCK}`);
  const sectors = (o.dataBlocks * BLOCK) / 512;
  const hashStart = o.hashOffset / BLOCK;
  const hashDev = o.hashDevice ?? o.dataDevice;
  return `0 ${sectors} verity 1 ${o.dataDevice} ${hashDev} ${BLOCK} ${BLOCK} ${o.dataBlocks} ${hashStart} sha256 ${o.rootHash} ${o.salt}`;
}

export type VerityCheck =
  | { ok: true }
  | { ok: false; problem: string; dataBlock?: number; level?: number; hashBlock?: number };

/**
 * Checks a payload against its root hash block by block: every data block against level 0,
 * every stored hash block against the level above, the top block against the root.
 * `offset` is where the payload starts inside `path` (0 for a payload file; a partition's
 * start for a whole disk image).
 */
export async function verifyVerity(path: string, params: VerityParams & { offset?: number }): Promise<VerityCheck> {
  const base = params.offset ?? 0;
  const salt = Buffer.from(params.salt, 'hex');
  const sizes = levelSizes(params.dataBlocks);
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`dm-verity: cannot open ${path}: ${err.code ?? err.message}`);
  });
  try {
    const fileSize = (await fh.stat()).size;
    const treeBytes = sizes.reduce((a, b) => a + b, 0) * BLOCK;
    if (base + params.hashOffset + treeBytes > fileSize)
      return { ok: false, problem: `${path} is too short to hold the hash tree (${treeBytes} bytes at ${base + params.hashOffset})` };

    // Stored levels, top level first on disk.
    const stored: Buffer[] = [];
    let pos = base + params.hashOffset;
    for (let level = sizes.length - 1; level >= 0; level--) {
      const buf = Buffer.alloc(sizes[level] * BLOCK);
      await fh.read(buf, 0, buf.length, pos);
      stored[level] = buf;
      pos += buf.length;
    }

    const root = Buffer.from(params.rootHash, 'hex');
    if (sizes.length === 0) {
      const [only] = await hashDataBlocks(fh, base, 1, salt, BLOCK);
      return only.equals(root) ? { ok: true } : { ok: false, problem: 'data block 0 does not match the root hash', dataBlock: 0 };
    }
    const top = stored[sizes.length - 1];
    if (!hashBlock(salt, top).equals(root))
      return { ok: false, problem: 'top hash block does not match the root hash', level: sizes.length - 1, hashBlock: 0 };
    for (let level = sizes.length - 1; level > 0; level--) {
      const below = stored[level - 1];
      for (let i = 0; i < sizes[level - 1]; i++) {
        const d = hashBlock(salt, below.subarray(i * BLOCK, (i + 1) * BLOCK));
        if (!d.equals(stored[level].subarray(i * DIGEST, (i + 1) * DIGEST)))
          return { ok: false, problem: `hash block ${i} of level ${level - 1} is corrupt`, level: level - 1, hashBlock: i };
      }
    }
    const digests = await hashDataBlocks(fh, base, params.dataBlocks, salt, params.dataBlocks * BLOCK);
    for (let i = 0; i < digests.length; i++) {
      if (!digests[i].equals(stored[0].subarray(i * DIGEST, (i + 1) * DIGEST)))
        return { ok: false, problem: `data block ${i} (byte ${i * BLOCK}) does not match its hash`, dataBlock: i };
    }
    return { ok: true };
  } finally {
    await fh.close();
  }
}
