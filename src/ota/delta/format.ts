/**
 * The delta file (edgekit-delta/1).
 *
 *   "EKDELTA1" | u32 header length | header (brotli JSON, DeltaHeader)
 *   | ops stream | add stream | literal stream        (each brotli-compressed, lengths in the header)
 *
 * The ops stream is a program that writes the target payload front to back:
 *   COPY   off len          stored bytes of the active payload, verbatim (unchanged file blocks)
 *   LIT    len              bytes from the literal stream (superblock, inode and directory tables)
 *   BLOCK  raw stored crc   one data or fragment block: its uncompressed bytes come from a recipe
 *                           of RCOPY/RADD/RLIT pieces, then the device compresses it with the
 *                           encoder the header names and must get exactly `stored` bytes with
 *                           CRC-32 `crc`
 *   VERITY                  the dm-verity hash tree of everything written so far (header.verity)
 *   END
 * Recipe pieces read uncompressed bytes of an old file ("source", listed in the header by where
 * its blocks sit in the active payload): RCOPY src off len; RADD src off len adds the next `len`
 * (`off` is zigzag-coded relative to where the previous piece from the same source ended)
 * add-stream bytes to them (bsdiff's differences); RLIT len takes literal-stream bytes.
 * Separate streams keep alike bytes together, which is what makes them compress.
 */
import type { Compression } from '../../fs/squashfs/codec.js';

export const MAGIC = 'EKDELTA1';

export const FORMAT = 'edgekit-delta/2';

export enum Op {
  End = 0,
  Copy = 1,
  Literal = 2,
  Block = 3,
  Verity = 4,
  RCopy = 0x10,
  RAdd = 0x11,
  RLit = 0x12,
}

export interface DeltaSource {
  size: number;
  /** Full blocks: [absolute offset, size word]. */
  blocks: [number, number][];
  /** Tail: [fragment block offset, its size word, offset of the tail inside it]. */
  tail?: [number, number, number];
}

export interface DeltaHeader {
  format: typeof FORMAT;
  from: { size: number; sha256: string };
  to: { size: number; sha256: string };
  /**
   * How rebuilt blocks are compressed: the target's compression, and the exact encoder that made
   * its blocks (codec.ts ENCODER; for gzip, with the publisher's zlib version). The device refuses
   * a delta whose encoder it does not run bit for bit, before writing anything.
   */
  target: { compression: Compression; encoder: string; blockSize: number };
  /** The active payload's squashfs: block size and the codec of its compressed blocks. */
  source: { blockSize: number; codec: Compression };
  sources: DeltaSource[];
  verity?: { salt: string; dataSize: number };
  streams: { ops: number; add: number; literal: number };
}

/** A growable byte buffer with LEB128 varints. */
export class ByteWriter {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private room(n: number): void {
    if (this.length + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.length + n));
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  byte(v: number): void {
    this.room(1);
    this.buf[this.length++] = v;
  }
  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`varint out of range: ${v}`);
    this.room(8);
    while (v >= 0x80) {
      this.buf[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.length++] = v;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v >>> 0, this.length);
    this.length += 4;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.length);
    this.length += b.length;
  }
  finish(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

/**
 * Reads a byte stream pulled from an async iterator. The small reads (byte, varint, u32) are
 * synchronous over what is buffered: a caller awaits need() before a run of them, so decoding
 * millions of operations costs no promise each (which would keep the garbage collector busy).
 */
export class ByteReader {
  private chunk: Buffer = Buffer.alloc(0);
  private pos = 0;
  private ended = false;

  constructor(
    private readonly source: AsyncIterator<Buffer>,
    private readonly what: string,
  ) {}

  /** Bytes buffered and not yet read. */
  get buffered(): number {
    return this.chunk.length - this.pos;
  }

  private async fill(): Promise<boolean> {
    const next = await this.source.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    this.chunk = this.pos < this.chunk.length ? Buffer.concat([this.chunk.subarray(this.pos), next.value]) : next.value;
    this.pos = 0;
    return true;
  }

  /** Buffers at least `n` bytes, or everything left when the stream ends first. */
  async need(n: number): Promise<void> {
    while (this.buffered < n && !this.ended) await this.fill();
  }

  private short(): never {
    throw new DeltaFormatError(`${this.what} ends early`);
  }

  byte(): number {
    if (this.pos >= this.chunk.length) this.short();
    return this.chunk[this.pos++];
  }

  varint(): number {
    let v = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      v += (b & 0x7f) * scale;
      if (b < 0x80) return v;
      scale *= 0x80;
    }
    throw new DeltaFormatError(`${this.what}: malformed number`);
  }

  u32(): number {
    if (this.buffered < 4) this.short();
    const v = this.chunk.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  /** The next `n` bytes, copied into `into` at `at` (or returned). */
  async take(n: number, into?: Buffer, at = 0): Promise<Buffer> {
    const out = into ?? Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      if (this.pos >= this.chunk.length && !(await this.fill())) this.short();
      const k = Math.min(n - done, this.chunk.length - this.pos);
      this.chunk.copy(out, at + done, this.pos, this.pos + k);
      this.pos += k;
      done += k;
    }
    return into ? out.subarray(at, at + n) : out;
  }

  /** The buffer that skip() positions point into (valid until the next await on this reader). */
  get current(): Buffer {
    return this.chunk;
  }

  /**
   * Consumes the next `n` bytes when that many are buffered and returns where they start in
   * `current` (-1, consuming nothing, when fewer are buffered): no view object per read, which
   * matters at hundreds of thousands of pieces per delta.
   */
  skip(n: number): number {
    if (this.chunk.length - this.pos < n) return -1;
    const at = this.pos;
    this.pos += n;
    return at;
  }

  /** True when nothing is left: a stream must be used up exactly. */
  async atEnd(): Promise<boolean> {
    await this.need(1);
    return this.buffered === 0;
  }
}

/** A delta that does not decode: corrupt, truncated or not a delta. */
export class DeltaFormatError extends Error {}
