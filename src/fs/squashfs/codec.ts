/**
 * The block compressors a squashfs image can use, and what the superblock says about them.
 *
 * - lz4: edgekit's own deterministic LZ4 encoder (lz4.ts). Every build of edgekit and the device's
 *   update agent produce the same bytes, so OTA deltas can rebuild changed blocks on the device;
 *   it decodes faster than anything else the kernel offers. About a third larger than gzip.
 * - gzip: zlib level 9 from Node's zlib. Smallest, but the bytes depend on the zlib Node was built
 *   with (Node's bundled one and Debian's system one differ), so a device cannot rebuild blocks
 *   the builder made: deltas to such a root only apply where the zlib is the same.
 * - none: blocks stored as they are; biggest slots, cheapest deltas.
 */
import { deflate, deflateSync, inflateSync } from 'node:zlib';
import { LZ4_ENCODER, lz4Bound, lz4Compress, lz4Decompress } from './lz4.js';
import { METADATA_UNCOMPRESSED } from './layout.js';
import { EdgekitError } from '../../util/errors.js';

export type Compression = 'gzip' | 'lz4' | 'none';

/** The superblock's compression id (squashfs_fs.h); 'none' keeps gzip's id with every "uncompressed" flag set. */
export const COMPRESSOR_ID: Record<Compression, number> = { gzip: 1, lz4: 5, none: 1 };
export const COMPRESSOR_NAME: Record<number, string> = { 1: 'gzip', 2: 'lzma', 3: 'lzo', 4: 'xz', 5: 'lz4', 6: 'zstd' };

/**
 * The encoder (and version) this process compresses blocks with: deltas record the publisher's
 * and a device rebuilds blocks only when its own is the same.
 */
export function encoderOf(c: Compression): string {
  return c === 'lz4' ? LZ4_ENCODER : c === 'gzip' ? `zlib ${process.versions.zlib} level 9` : 'none';
}

/**
 * The compressor options block that follows the superblock when the superblock's
 * "compressor options" flag is set. The kernel insists on one for LZ4: { version 1 (legacy), flags 0 },
 * as an uncompressed metadata block.
 */
export function compressorOptions(c: Compression): Buffer {
  if (c !== 'lz4') return Buffer.alloc(0);
  const b = Buffer.alloc(10);
  b.writeUInt16LE(8 | METADATA_UNCOMPRESSED, 0);
  b.writeUInt32LE(1, 2);
  b.writeUInt32LE(0, 6);
  return b;
}

let lz4Out = Buffer.alloc(lz4Bound(1 << 17));

/** The compressed form of `raw`, or undefined when it is not smaller (store it raw then). */
export function compressSync(c: Compression, raw: Buffer): Buffer | undefined {
  let packed: Buffer;
  if (c === 'none') return undefined;
  if (c === 'gzip') packed = deflateSync(raw, { level: 9 });
  else {
    if (lz4Out.length < lz4Bound(raw.length)) lz4Out = Buffer.alloc(lz4Bound(raw.length));
    const n = lz4Compress(raw, lz4Out);
    packed = n < raw.length ? Buffer.from(lz4Out.subarray(0, n)) : raw;
  }
  return packed.length < raw.length ? packed : undefined;
}

/** As compressSync; gzip runs on libuv's thread pool so several blocks compress at once. */
export function compressAsync(c: Compression, raw: Buffer): Promise<Buffer | undefined> {
  if (c !== 'gzip') return Promise.resolve(compressSync(c, raw));
  return new Promise((resolve, reject) =>
    deflate(raw, { level: 9 }, (err, out) => (err ? reject(err) : resolve(out.length < raw.length ? out : undefined))),
  );
}

/** The compression a superblock describes (compressor id and "data uncompressed" flag). */
export function compressionOf(compressorId: number, flags: number, where: string): Compression {
  if ((flags & 0x0002) !== 0) return 'none';
  if (compressorId === 1) return 'gzip';
  if (compressorId === 5) return 'lz4';
  throw new EdgekitError(`${where}: squashfs compressor ${COMPRESSOR_NAME[compressorId] ?? compressorId} is not one edgekit reads (gzip, lz4)`);
}

/**
 * The uncompressed bytes of a stored block of at most `maxLength` bytes. LZ4 decodes into `into`
 * when given (the result is a view of it), so a caller that reuses buffers makes no garbage.
 */
export function decompressBlock(c: Compression, stored: Buffer, maxLength: number, into?: Buffer): Buffer {
  if (c === 'none') return stored;
  if (c === 'gzip') return inflateSync(stored, { maxOutputLength: Math.max(maxLength, 1) });
  const dst = into && into.length >= maxLength ? into : Buffer.allocUnsafe(maxLength);
  return dst.subarray(0, lz4Decompress(stored, dst.subarray(0, maxLength)));
}
