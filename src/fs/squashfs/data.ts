/**
 * The data area of a squashfs image: file blocks and fragment blocks, compressed with several
 * blocks in flight (gzip runs on libuv's thread pool, so both cores work) and written to disk
 * strictly in submission order, which keeps the output deterministic.
 */
import type { FileHandle } from 'node:fs/promises';
import { DATA_UNCOMPRESSED } from './layout.js';
import { compressAsync, type Compression } from './codec.js';

/** Blocks compressing at once; a few more than the cores so reading overlaps compressing. */
const IN_FLIGHT = 6;
/** Written output is gathered into writes of about this size. */
const WRITE_BATCH = 1 << 20;

/** Called once a block has its place: its absolute position and the size word inodes record. */
export type Placed = (position: number, sizeWord: number) => void;

interface Pending {
  raw: Buffer;
  packed: Promise<Buffer | undefined>;
  placed: Placed;
}

export class DataWriter {
  private readonly queue: Pending[] = [];
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private batchStart: number;
  private readonly zeros: Buffer;

  constructor(
    private readonly fh: FileHandle,
    /** Absolute position where the data area starts. */
    private position: number,
    private readonly compression: Compression,
    blockSize: number,
  ) {
    this.batchStart = position;
    this.zeros = Buffer.alloc(blockSize);
  }

  /** End of everything placed so far. */
  get end(): number {
    return this.position;
  }

  /**
   * Queues a block. All-zero blocks are not stored (size word 0, which both the kernel and
   * unsquashfs read back as zeros); fragment blocks must always be stored, so they pass
   * `mayBeSparse` false. Resolves once the queue has room again.
   */
  async add(raw: Buffer, placed: Placed, mayBeSparse = true): Promise<void> {
    const sparse = mayBeSparse && raw.equals(this.zeros.subarray(0, raw.length));
    const packed = sparse ? Promise.resolve(undefined) : compressAsync(this.compression, raw);
    packed.catch(() => undefined); // surfaced when awaited in order
    this.queue.push({ raw: sparse ? Buffer.alloc(0) : raw, packed, placed });
    while (this.queue.length >= IN_FLIGHT) await this.placeOldest();
  }

  /** Places every queued block and writes everything out. */
  async finish(): Promise<number> {
    while (this.queue.length > 0) await this.placeOldest();
    await this.flushBatch();
    return this.position;
  }

  private async placeOldest(): Promise<void> {
    const job = this.queue.shift()!;
    const packed = await job.packed;
    if (job.raw.length === 0) {
      job.placed(this.position, 0);
      return;
    }
    const useRaw = !packed;
    const stored = useRaw ? job.raw : packed;
    job.placed(this.position, useRaw ? stored.length | DATA_UNCOMPRESSED : stored.length);
    this.batch.push(stored);
    this.batchBytes += stored.length;
    this.position += stored.length;
    if (this.batchBytes >= WRITE_BATCH) await this.flushBatch();
  }

  private async flushBatch(): Promise<void> {
    if (this.batchBytes === 0) return;
    await this.fh.writev(this.batch, this.batchStart);
    this.batchStart += this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
  }
}

export interface FragmentRef {
  index: number;
  offset: number;
}

/**
 * Packs file tails (and files smaller than a block) into shared fragment blocks, in the order
 * they arrive. A fragment block is queued on the data writer when the next tail does not fit.
 */
export class FragmentPacker {
  private buffer: Buffer;
  private used = 0;
  /** Fragment table entries (start, size word), filled in as fragment blocks are placed. */
  readonly entries: { start: number; sizeWord: number }[] = [];

  constructor(
    private readonly data: DataWriter,
    private readonly blockSize: number,
  ) {
    this.buffer = Buffer.alloc(blockSize);
  }

  async add(tail: Buffer): Promise<FragmentRef> {
    if (this.used + tail.length > this.blockSize) await this.flush();
    if (this.used === 0) this.entries.push({ start: 0, sizeWord: 0 });
    const ref = { index: this.entries.length - 1, offset: this.used };
    tail.copy(this.buffer, this.used);
    this.used += tail.length;
    return ref;
  }

  async flush(): Promise<void> {
    if (this.used === 0) return;
    const entry = this.entries[this.entries.length - 1];
    const block = this.buffer.subarray(0, this.used);
    const placed = (start: number, sizeWord: number) => {
      entry.start = start;
      entry.sizeWord = sizeWord;
    };
    await this.data.add(block, placed, false);
    this.buffer = Buffer.alloc(this.blockSize);
    this.used = 0;
  }
}
