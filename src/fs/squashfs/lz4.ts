/**
 * LZ4 block format (no frame), as squashfs stores LZ4 data and metadata blocks.
 *
 * Why our own encoder: an OTA delta rebuilds changed blocks of the new root on the device, and the
 * rebuilt bytes must equal the builder's exactly. Native compressors differ between builds of the
 * same library (Node's bundled zlib and Debian's system zlib give different deflate output), so
 * the builder and the device agent both use this one, written in plain JS. Its output is part of
 * the image format: a change to the match finder changes images, so it carries a version
 * (LZ4_ENCODER) that deltas record and the device checks.
 *
 * The encoder is the classic greedy one (4-byte hash, 64 KiB window, skipping faster through data
 * that does not match): about 150 MB/s of CPU time in V8, and the kernel decodes it with
 * LZ4_decompress_safe. Blocks are at most 1 MiB (squashfs's largest block size).
 */

export const LZ4_ENCODER = 'edgekit-lz4/1';

/** Worst-case size of the compressed form of `n` bytes. */
export function lz4Bound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}

export type Lz4Compress = (src: Uint8Array, dst: Uint8Array) => number;

const HASH_LOG = 16;
const MIN_MATCH = 4;
/** The format's end rules: the last 5 bytes are literals, and no match starts in the last 12. */
const LAST_LITERALS = 5;
const MF_LIMIT = 12;
const MAX_OFFSET = 65535;
/** After 2^SKIP_TRIGGER misses in a row, the search step grows by one (LZ4's acceleration). */
const SKIP_TRIGGER = 6;
/** Below this many bytes a loop beats making a subarray for set()/copyWithin(). */
const SHORT = 32;

function read32(b: Uint8Array, i: number): number {
  return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24);
}

function hash(v: number): number {
  return Math.imul(v, 2654435761) >>> (32 - HASH_LOG);
}

function copyBytes(src: Uint8Array, from: number, dst: Uint8Array, to: number, len: number): number {
  if (len > SHORT) dst.set(src.subarray(from, from + len), to);
  else for (let i = 0; i < len; i++) dst[to + i] = src[from + i];
  return to + len;
}

function writeLength(dst: Uint8Array, op: number, len: number): number {
  while (len >= 255) {
    dst[op++] = 255;
    len -= 255;
  }
  dst[op++] = len;
  return op;
}

/** Makes an encoder with its own hash table (an encoder is not re-entrant; one per thread). */
export function lz4Encoder(): Lz4Compress {
  // Positions are stored as (generation base + position) so the table never needs clearing:
  // anything below the current base belongs to an earlier block.
  const table = new Int32Array(1 << HASH_LOG);
  let base = 0;

  return (src, dst) => {
    const n = src.length;
    if (n > 1 << 20) throw new RangeError(`lz4: block of ${n} bytes is over 1 MiB`);
    if (dst.length < lz4Bound(n)) throw new RangeError('lz4: output buffer too small');
    if (base > 0x7fffffff - 2 * (1 << 20)) {
      table.fill(0);
      base = 0;
    }
    const b = base + 1; // table entries below b are stale
    base += n + 1;

    let anchor = 0;
    let op = 0;
    if (n >= MF_LIMIT + 1) {
      const mflimit = n - MF_LIMIT;
      const matchlimit = n - LAST_LITERALS;
      let ip = 1;
      let misses = 1 << SKIP_TRIGGER;
      while (ip < mflimit) {
        const seq = read32(src, ip);
        const h = hash(seq);
        const ref = table[h] - b;
        table[h] = b + ip;
        if (ref < 0 || ip - ref > MAX_OFFSET || read32(src, ref) !== seq) {
          ip += misses++ >> SKIP_TRIGGER;
          continue;
        }
        misses = 1 << SKIP_TRIGGER;
        let start = ip;
        let from = ref;
        while (start > anchor && from > 0 && src[start - 1] === src[from - 1]) {
          start--;
          from--;
        }
        let end = ip + MIN_MATCH;
        let r = ref + MIN_MATCH;
        while (end < matchlimit && src[end] === src[r]) {
          end++;
          r++;
        }
        const litLen = start - anchor;
        const matchLen = end - start - MIN_MATCH;
        const token = op++;
        dst[token] = (Math.min(litLen, 15) << 4) | Math.min(matchLen, 15);
        if (litLen >= 15) op = writeLength(dst, op, litLen - 15);
        op = copyBytes(src, anchor, dst, op, litLen);
        const offset = start - from;
        dst[op++] = offset & 0xff;
        dst[op++] = offset >>> 8;
        if (matchLen >= 15) op = writeLength(dst, op, matchLen - 15);
        ip = end;
        anchor = end;
        if (ip < mflimit) table[hash(read32(src, ip - 2))] = b + ip - 2;
      }
    }
    const litLen = n - anchor;
    dst[op++] = Math.min(litLen, 15) << 4;
    if (litLen >= 15) op = writeLength(dst, op, litLen - 15);
    return copyBytes(src, anchor, dst, op, litLen);
  };
}

/**
 * Compresses `src` into `dst` (at least lz4Bound(src.length) bytes) and returns the compressed
 * length. Deterministic: the same input always gives the same output.
 */
export const lz4Compress: Lz4Compress = lz4Encoder();

export class Lz4FormatError extends Error {}

/** Where the last extendedLength() stopped (a module variable: no object per call). */
let lengthEnd = 0;

/** A length of 15 continues in bytes of up to 255 each, until one below 255. */
function extendedLength(src: Uint8Array, at: number, len: number): number {
  let x;
  do {
    if (at >= src.length) throw new Lz4FormatError('lz4: block ends inside a length');
    x = src[at++];
    len += x;
  } while (x === 255);
  lengthEnd = at;
  return len;
}

/**
 * Decompresses one LZ4 block into `dst` and returns the decompressed length. Checks every length
 * and offset against both buffers, so a corrupt block throws instead of reading or writing out of
 * bounds.
 */
export function lz4Decompress(src: Uint8Array, dst: Uint8Array): number {
  let ip = 0;
  let op = 0;
  const end = src.length;
  for (;;) {
    if (ip >= end) throw new Lz4FormatError('lz4: block ends inside a sequence');
    const token = src[ip++];
    let lit = token >>> 4;
    if (lit === 15) {
      lit = extendedLength(src, ip, lit);
      ip = lengthEnd;
    }
    if (ip + lit > end || op + lit > dst.length) throw new Lz4FormatError('lz4: literals run past the block');
    op = copyBytes(src, ip, dst, op, lit);
    ip += lit;
    if (ip === end) return op;
    if (ip + 2 > end) throw new Lz4FormatError('lz4: block ends inside an offset');
    const offset = src[ip] | (src[ip + 1] << 8);
    ip += 2;
    let len = token & 15;
    if (len === 15) {
      len = extendedLength(src, ip, len);
      ip = lengthEnd;
    }
    len += MIN_MATCH;
    if (offset === 0 || offset > op) throw new Lz4FormatError(`lz4: match offset ${offset} before the start`);
    if (op + len > dst.length) throw new Lz4FormatError('lz4: match runs past the output');
    let from = op - offset;
    if (offset >= len && len > SHORT) {
      dst.copyWithin(op, from, from + len);
      op += len;
    } else {
      // Short or overlapping (a repeated pattern): byte by byte, as the format defines it.
      for (const stop = op + len; op < stop; ) dst[op++] = dst[from++];
    }
  }
}
