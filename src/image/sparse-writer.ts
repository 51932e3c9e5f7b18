/**
 * Writes an image file sparsely: all-zero 4 KiB blocks are never written (they stay holes), and
 * every block that received data is remembered, so the block map comes out of the write itself.
 */
import { createHash } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { BMAP_BLOCK_SIZE, type BlockMap, type MappedRange } from './bmap.js';

const CHUNK = 4 * 1024 * 1024;

export class SparseImageWriter {
  private touched = new Set<number>();
  private constructor(private fh: FileHandle, readonly size: number) {}

  static async create(path: string, size: number): Promise<SparseImageWriter> {
    const fh = await open(path, 'w+', 0o644);
    await fh.truncate(size);
    return new SparseImageWriter(fh, size);
  }

  /** Writes `data` at `offset`, skipping all-zero blocks. */
  async write(offset: number, data: Buffer): Promise<void> {
    if (offset + data.length > this.size) throw new Error(`write past the end of the image (${offset}+${data.length} > ${this.size})`);
    let runStart = -1;
    const flush = async (end: number) => {
      if (runStart < 0) return;
      await this.fh.write(data, runStart, end - runStart, offset + runStart);
      runStart = -1;
    };
    // Walk the buffer in pieces that line up with the image's 4 KiB blocks.
    let pos = 0;
    while (pos < data.length) {
      const abs = offset + pos;
      const blockEnd = (Math.floor(abs / BMAP_BLOCK_SIZE) + 1) * BMAP_BLOCK_SIZE;
      const end = Math.min(data.length, blockEnd - offset);
      if (isZero(data, pos, end)) {
        await flush(pos);
      } else {
        if (runStart < 0) runStart = pos;
        this.touched.add(Math.floor(abs / BMAP_BLOCK_SIZE));
      }
      pos = end;
    }
    await flush(data.length);
  }

  /** Copies a file into the image at `offset`, streaming; returns the sha256 and length of the file. */
  async copyFile(offset: number, path: string): Promise<{ sha256: string; size: number }> {
    const src = await open(path, 'r');
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(CHUNK);
    let pos = 0;
    try {
      for (;;) {
        const { bytesRead } = await src.read(buf, 0, CHUNK, pos);
        if (bytesRead === 0) break;
        const piece = buf.subarray(0, bytesRead);
        hash.update(piece);
        await this.write(offset + pos, piece);
        pos += bytesRead;
      }
    } finally {
      await src.close();
    }
    return { sha256: hash.digest('hex'), size: pos };
  }

  /** Reads back every block that received data and returns the block map with range hashes. */
  async finish(): Promise<BlockMap> {
    const blocks = [...this.touched].sort((a, b) => a - b);
    const ranges: MappedRange[] = [];
    const buf = Buffer.alloc(BMAP_BLOCK_SIZE);
    let i = 0;
    while (i < blocks.length) {
      let j = i;
      while (j + 1 < blocks.length && blocks[j + 1] === blocks[j] + 1) j++;
      const hash = createHash('sha256');
      for (let b = blocks[i]; b <= blocks[j]; b++) {
        const len = Math.min(BMAP_BLOCK_SIZE, this.size - b * BMAP_BLOCK_SIZE);
        buf.fill(0);
        await this.fh.read(buf, 0, len, b * BMAP_BLOCK_SIZE);
        hash.update(buf.subarray(0, len));
      }
      ranges.push({ first: blocks[i], last: blocks[j], sha256: hash.digest('hex') });
      i = j + 1;
    }
    await this.fh.sync();
    await this.fh.close();
    return { imageSize: this.size, blockSize: BMAP_BLOCK_SIZE, ranges };
  }

  async abort(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

const ZEROS = Buffer.alloc(CHUNK);

/** memcmp against zeros (native); a JS loop over every payload byte would dominate build time. */
export function isZero(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let pos = start; pos < end; pos += CHUNK) {
    const len = Math.min(CHUNK, end - pos);
    if (buf.compare(ZEROS, 0, len, pos, pos + len) !== 0) return false;
  }
  return true;
}
