/**
 * A squashfs metadata stream (inode table, directory table, id and fragment tables): the bytes
 * are cut into 8 KiB pieces, each stored compressed behind a 2-byte length header (or raw, with
 * the header's top bit set, when compression does not help).
 *
 * Tables refer into a stream by (start of the metadata block on disk, relative to the table; byte
 * offset within the uncompressed block). The block being filled always starts where the finished
 * ones end, so a position can be resolved as soon as its bytes are appended.
 */
import { METADATA_SIZE, METADATA_UNCOMPRESSED } from './layout.js';
import { compressSync, type Compression } from './codec.js';

export type { Compression };

export interface MetadataPosition {
  /** Table-relative byte offset of the metadata block on disk. */
  block: number;
  /** Offset within the uncompressed block. */
  offset: number;
}

export class MetadataWriter {
  private readonly finished: Buffer[] = [];
  private readonly blockStarts: number[] = [];
  private finishedBytes = 0;
  private current = Buffer.alloc(METADATA_SIZE);
  private currentLength = 0;

  constructor(private readonly compression: Compression) {}

  /** Uncompressed bytes appended so far: the position the next append lands at. */
  get length(): number {
    return this.blockStarts.length * METADATA_SIZE + this.currentLength;
  }

  /** Where the uncompressed byte `at` (already appended, or the next one) lives on disk. */
  positionOf(at: number): MetadataPosition {
    const blockNo = Math.floor(at / METADATA_SIZE);
    const block = blockNo < this.blockStarts.length ? this.blockStarts[blockNo] : this.finishedBytes;
    return { block, offset: at % METADATA_SIZE };
  }

  append(data: Buffer): void {
    let from = 0;
    while (from < data.length) {
      const n = Math.min(data.length - from, METADATA_SIZE - this.currentLength);
      data.copy(this.current, this.currentLength, from, from + n);
      this.currentLength += n;
      from += n;
      if (this.currentLength === METADATA_SIZE) this.flushBlock();
    }
  }

  /** The stored table, and the on-disk start (relative to it) of each of its metadata blocks. */
  finish(): { bytes: Buffer; blockStarts: number[] } {
    if (this.currentLength > 0) this.flushBlock();
    return { bytes: Buffer.concat(this.finished), blockStarts: [...this.blockStarts] };
  }

  private flushBlock(): void {
    const raw = this.current.subarray(0, this.currentLength);
    const packed = compressSync(this.compression, raw);
    const stored = packed ?? Buffer.from(raw);
    const head = Buffer.alloc(2);
    head.writeUInt16LE(stored === packed ? stored.length : stored.length | METADATA_UNCOMPRESSED);
    this.blockStarts.push(this.finishedBytes);
    this.finished.push(head, stored);
    this.finishedBytes += 2 + stored.length;
    this.current = Buffer.alloc(METADATA_SIZE);
    this.currentLength = 0;
  }
}

/**
 * A table of fixed-size records (ids, fragment entries) as squashfs stores it: the records in
 * metadata blocks, followed by a raw array of u64 absolute positions of those blocks. Returns the
 * bytes to place at `at` and the offset (relative to `at`) of the u64 array the superblock points to.
 */
export function encodeLookupTable(records: Buffer, at: number, compression: Compression): { bytes: Buffer; indexOffset: number } {
  const meta = new MetadataWriter(compression);
  meta.append(records);
  const { bytes, blockStarts } = meta.finish();
  const index = Buffer.alloc(8 * blockStarts.length);
  blockStarts.forEach((s, i) => index.writeBigUInt64LE(BigInt(at + s), 8 * i));
  return { bytes: Buffer.concat([bytes, index]), indexOffset: bytes.length };
}
