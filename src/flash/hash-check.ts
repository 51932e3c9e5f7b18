/**
 * Checks made while the image streams past, each fed the bytes that are written, in image order:
 *  - RangeCheck: every range of the block map against its sha256 (as bmaptool does), so a corrupt
 *    source or a .bmap of another image fails naming the range;
 *  - RegionCheck: every signed region of the manifest (partition tables, payloads) against the
 *    signed sha256, counting unwritten bytes as the zeros a fresh target holds there; this is what
 *    makes the signature cover the data and not only the manifest.
 */
import { createHash, type Hash } from 'node:crypto';
import { EdgekitError } from '../util/errors.js';
import type { CheckedRange } from './readback.js';

export class RangeCheck {
  private i = 0;
  private hash: Hash = createHash('sha256');
  private seen = 0;

  constructor(private ranges: CheckedRange[], private where: string) {}

  /** `data` holds image bytes [abs, abs + data.length); calls come in increasing order. */
  consume(abs: number, data: Buffer): void {
    const end = abs + data.length;
    while (this.i < this.ranges.length) {
      const r = this.ranges[this.i];
      if (r.start >= end) return;
      const from = Math.max(r.start, abs);
      const to = Math.min(r.end, end);
      if (to > from) {
        this.hash.update(data.subarray(from - abs, to - abs));
        this.seen += to - from;
      }
      if (to < r.end) return;
      const ok = this.seen === r.end - r.start && this.hash.digest('hex') === r.sha256;
      if (!ok) {
        throw new EdgekitError(
          `${this.where}: data does not match the block map in blocks ${r.start / 4096}-${Math.ceil(r.end / 4096) - 1} (bytes ${r.start}-${r.end - 1}): the image is corrupt or the .bmap is another image's`,
        );
      }
      this.i++;
      this.hash = createHash('sha256');
      this.seen = 0;
    }
  }

  /** Throws when the source ended before the last mapped range. */
  finish(endOfSource: number): void {
    if (this.i < this.ranges.length) {
      const last = this.ranges[this.ranges.length - 1];
      throw new EdgekitError(
        `${this.where}: the image ends at byte ${endOfSource}, but its block map has data up to byte ${last.end}: the image is truncated`,
      );
    }
  }
}

export interface SignedRegion {
  name: string;
  offset: number;
  size: number;
  sha256: string;
}

const ZEROS = Buffer.alloc(1 << 20);

export class RegionCheck {
  private regions: SignedRegion[];
  private i = 0;
  private pos: number; // image bytes before this are accounted for in the current region
  private hash: Hash = createHash('sha256');

  constructor(regions: SignedRegion[], private where: string) {
    this.regions = [...regions].sort((a, b) => a.offset - b.offset);
    for (let k = 1; k < this.regions.length; k++) {
      const p = this.regions[k - 1];
      if (p.offset + p.size > this.regions[k].offset) throw new EdgekitError(`${where}: signed regions ${p.name} and ${this.regions[k].name} overlap`);
    }
    this.pos = this.regions[0]?.offset ?? 0;
  }

  consume(abs: number, data: Buffer): void {
    this.advance(abs, data);
  }

  /** Whether bytes [start, end) lie inside one signed region. */
  covers(start: number, end: number): boolean {
    return this.regions.some((r) => r.offset <= start && end <= r.offset + r.size);
  }

  /** Zero-fills the rest of every region up to `imageSize` and checks them all. */
  finish(imageSize: number): void {
    this.advance(imageSize, Buffer.alloc(0));
    if (this.i < this.regions.length) {
      const r = this.regions[this.i];
      throw new EdgekitError(`${this.where}: signed region ${r.name} ends at byte ${r.offset + r.size}, past the image's end (${imageSize})`);
    }
  }

  private advance(abs: number, data: Buffer): void {
    const end = abs + data.length;
    while (this.i < this.regions.length) {
      const r = this.regions[this.i];
      const rEnd = r.offset + r.size;
      if (this.pos < r.offset) this.pos = r.offset;
      // Bytes of the region before `abs` were not written: zeros.
      const gapEnd = Math.min(abs, rEnd);
      for (; this.pos < gapEnd; ) {
        const n = Math.min(ZEROS.length, gapEnd - this.pos);
        this.hash.update(ZEROS.subarray(0, n));
        this.pos += n;
      }
      const from = Math.max(this.pos, abs);
      const to = Math.min(rEnd, end);
      if (to > from) {
        this.hash.update(data.subarray(from - abs, to - abs));
        this.pos = to;
      }
      if (this.pos < rEnd) return;
      if (this.hash.digest('hex') !== r.sha256) {
        throw new EdgekitError(
          `${this.where}: signed region ${r.name} (bytes ${r.offset}-${rEnd - 1}) does not match the signed manifest: the image was altered after signing`,
        );
      }
      this.i++;
      this.hash = createHash('sha256');
    }
  }
}
