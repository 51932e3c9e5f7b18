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
 * that does not match), and the kernel decodes it with LZ4_decompress_safe. Blocks are at most
 * 1 MiB (squashfs's largest block size). It runs as WebAssembly (lz4.wat, about 400 MB/s
 * of CPU time on binaries here); the same algorithm in JavaScript (lz4EncoderJs, about 230 MB/s)
 * is its reference: both must give the same bytes, so either can rebuild a block the other made.
 */

import { LZ4_WASM } from './lz4-wasm.js';

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

/**
 * Both encoders' block checks and hash-table generations. Positions are stored as (generation base
 * + position), so the table never needs clearing between blocks: anything below the current base
 * belongs to an earlier block. Returns, per block, the first value that counts (`clear` empties
 * the table when the bases would overflow an int32).
 */
function blockGenerations(clear: () => void): (n: number, dstLength: number) => number {
  let base = 0;
  return (n, dstLength) => {
    if (n > 1 << 20) throw new RangeError(`lz4: block of ${n} bytes is over 1 MiB`);
    if (dstLength < lz4Bound(n)) throw new RangeError('lz4: output buffer too small');
    if (base > 0x7fffffff - 2 * (1 << 20)) {
      clear();
      base = 0;
    }
    const first = base + 1;
    base += n + 1;
    return first;
  };
}

/**
 * The encoder in JavaScript: the reference the WebAssembly one (lz4.wat) is checked
 * against, byte for byte. Makes an encoder with its own hash table (not re-entrant).
 */
export function lz4EncoderJs(): Lz4Compress {
  const table = new Int32Array(1 << HASH_LOG);
  const nextBlock = blockGenerations(() => table.fill(0));

  return (src, dst) => {
    const n = src.length;
    const b = nextBlock(n, dst.length);
    // Four bytes in one (unaligned, little-endian) load: V8 compiles DataView reads to a single
    // instruction, where four byte loads and shifts cost four bounds checks.
    const words = new DataView(src.buffer, src.byteOffset, n);

    let anchor = 0;
    let op = 0;
    if (n >= MF_LIMIT + 1) {
      const mflimit = n - MF_LIMIT;
      const matchlimit = n - LAST_LITERALS;
      const wordlimit = matchlimit - 4;
      let ip = 1;
      let misses = 1 << SKIP_TRIGGER;
      while (ip < mflimit) {
        const seq = words.getInt32(ip, true);
        const h = hash(seq);
        const ref = table[h] - b;
        table[h] = b + ip;
        if (ref < 0 || ip - ref > MAX_OFFSET || words.getInt32(ref, true) !== seq) {
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
        // Extend the match four bytes at a time; the first differing byte is the lowest set
        // byte of the XOR (little-endian). The same end as a byte-by-byte scan.
        let end = ip + MIN_MATCH;
        let r = ref + MIN_MATCH;
        for (;;) {
          if (end <= wordlimit) {
            const x = words.getInt32(end, true) ^ words.getInt32(r, true);
            if (x === 0) {
              end += 4;
              r += 4;
              continue;
            }
            end += (31 - Math.clz32(x & -x)) >>> 3;
            break;
          }
          while (end < matchlimit && src[end] === src[r]) {
            end++;
            r++;
          }
          break;
        }
        const litLen = start - anchor;
        const matchLen = end - start - MIN_MATCH;
        const token = op++;
        dst[token] = ((litLen < 15 ? litLen : 15) << 4) | (matchLen < 15 ? matchLen : 15);
        if (litLen >= 15) op = writeLength(dst, op, litLen - 15);
        op = copyBytes(src, anchor, dst, op, litLen);
        const offset = start - from;
        dst[op++] = offset & 0xff;
        dst[op++] = offset >>> 8;
        if (matchLen >= 15) op = writeLength(dst, op, matchLen - 15);
        ip = end;
        anchor = end;
        if (ip < mflimit) table[hash(words.getInt32(ip - 2, true))] = b + ip - 2;
      }
    }
    const litLen = n - anchor;
    dst[op++] = (litLen < 15 ? litLen : 15) << 4;
    if (litLen >= 15) op = writeLength(dst, op, litLen - 15);
    return copyBytes(src, anchor, dst, op, litLen);
  };
}

/** What lz4.wat's instances need from the global WebAssembly object (not in the ES lib types). */
interface Wasm {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Lz4Wasm };
}
interface Lz4Wasm {
  memory: { buffer: ArrayBuffer };
  compress: (n: number, b: number) => number;
  decompress: (end: number, cap: number) => number;
}
/** lz4.wat's memory layout: the hash table, then the raw area, then the compressed one. */
const WASM_TABLE_BYTES = 4 << HASH_LOG;
const WASM_RAW = 1 << 18;
const WASM_PACKED = WASM_RAW + (1 << 20);
let wasmModule: object | undefined;
/** Absent where node runs without it (--jitless): then the JavaScript codec, which gives the same bytes. */
const wasm = (globalThis as unknown as { WebAssembly?: Wasm }).WebAssembly;

function lz4Wasm(wasm: Wasm): { exports: Lz4Wasm; mem: Uint8Array } {
  wasmModule ??= new wasm.Module(Buffer.from(LZ4_WASM, 'base64'));
  const { exports } = new wasm.Instance(wasmModule, {});
  return { exports, mem: new Uint8Array(exports.memory.buffer) };
}

/**
 * Makes an encoder with its own hash table (an encoder is not re-entrant; one per thread): the
 * WebAssembly build of the same match finder (same bytes as lz4EncoderJs, about 1.7x faster).
 * Its instance's memory is 2.5 MiB, of which a block's worth is touched.
 */
export function lz4Encoder(): Lz4Compress {
  if (!wasm) return lz4EncoderJs();
  const { exports, mem } = lz4Wasm(wasm);
  const nextBlock = blockGenerations(() => mem.fill(0, 0, WASM_TABLE_BYTES));
  return (src, dst) => {
    const n = src.length;
    const b = nextBlock(n, dst.length);
    mem.set(src, WASM_RAW);
    const len = exports.compress(n, b);
    dst.set(mem.subarray(WASM_PACKED, WASM_PACKED + len));
    return len;
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
 * lz4Decompress in JavaScript: the reference for the WebAssembly decoder (same results, same
 * errors). Short copies go four bytes at a time and may write up to 3 bytes past the decompressed
 * length (never past `dst`): bytes of `dst` beyond the returned length are scratch.
 */
export function lz4DecompressJs(src: Uint8Array, dst: Uint8Array): number {
  let ip = 0;
  let op = 0;
  const end = src.length;
  const cap = dst.length;
  const inWords = new DataView(src.buffer, src.byteOffset, end);
  const outWords = new DataView(dst.buffer, dst.byteOffset, cap);
  for (;;) {
    if (ip >= end) throw new Lz4FormatError('lz4: block ends inside a sequence');
    const token = src[ip++];
    let lit = token >>> 4;
    if (lit === 15) {
      lit = extendedLength(src, ip, lit);
      ip = lengthEnd;
    }
    if (ip + lit > end || op + lit > cap) throw new Lz4FormatError('lz4: literals run past the block');
    if (lit > SHORT) {
      dst.set(src.subarray(ip, ip + lit), op);
      op += lit;
      ip += lit;
    } else if (ip + lit + 4 <= end && op + lit + 4 <= cap) {
      // Whole words, up to 3 bytes past the literals on both sides (still inside both buffers).
      for (let i = 0; i < lit; i += 4) outWords.setInt32(op + i, inWords.getInt32(ip + i, true), true);
      op += lit;
      ip += lit;
    } else for (const stop = ip + lit; ip < stop; ) dst[op++] = src[ip++];
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
    if (op + len > cap) throw new Lz4FormatError('lz4: match runs past the output');
    let from = op - offset;
    if (offset >= len && len > SHORT) {
      dst.copyWithin(op, from, from + len);
      op += len;
    } else if (offset >= 4 && op + len + 4 <= cap) {
      // Four bytes at a time: with the source at least 4 behind, each word read is already
      // written, so an overlapping match (a repeated pattern) comes out as the format defines.
      const stop = op + len;
      for (; op < stop; op += 4, from += 4) outWords.setInt32(op, outWords.getInt32(from, true), true);
      op = stop;
    } else {
      // Offsets 1-3 (a run of one to three bytes), or the last bytes of the buffer: byte by byte.
      for (const stop = op + len; op < stop; ) dst[op++] = dst[from++];
    }
  }
}

/** lz4.wat's decompress() error codes. */
const WASM_ERRORS: Record<number, string> = {
  [-1]: 'lz4: block ends inside a sequence',
  [-2]: 'lz4: block ends inside a length',
  [-3]: 'lz4: literals run past the block',
  [-4]: 'lz4: block ends inside an offset',
  [-5]: 'lz4: match offset before the start',
  [-6]: 'lz4: match runs past the output',
};
let decoder: { exports: Lz4Wasm; mem: Uint8Array } | undefined;

/**
 * Decompresses one LZ4 block into `dst` and returns the decompressed length. Checks every length
 * and offset against both buffers, so a corrupt block throws instead of reading or writing out of
 * bounds. Runs in WebAssembly (about twice the JavaScript decoder's speed) for blocks of up to
 * 1 MiB each way; bytes of `dst` past the returned length are left as they were.
 */
export function lz4Decompress(src: Uint8Array, dst: Uint8Array): number {
  if (!wasm || src.length > lz4Bound(1 << 20) || dst.length > 1 << 20) return lz4DecompressJs(src, dst);
  decoder ??= lz4Wasm(wasm);
  decoder.mem.set(src, WASM_PACKED);
  const n = decoder.exports.decompress(src.length, dst.length);
  if (n < 0) throw new Lz4FormatError(WASM_ERRORS[n] ?? `lz4: corrupt block (${n})`);
  dst.set(decoder.mem.subarray(WASM_RAW, WASM_RAW + n));
  return n;
}
