/**
 * Checks made while the image streams past, each fed the bytes that are written, in image order:
 *  - RangeCheck: every range of the block map against its sha256 (as bmaptool does), so a corrupt
 *    source or a .bmap of another image fails naming the range;
 *  - RegionCheck: every signed region of the manifest (partition tables, payloads) against the
 *    signed sha256, counting unwritten bytes as the zeros a fresh target holds there; this is what
 *    makes the signature cover the data and not only the manifest.
 * The hashing runs on worker threads (src/flash/hash-pool.ts): `consume` queues the bytes and adds
 * to `pending` what must settle before the buffer is reused; a verdict arrives a little later.
 * `failure` is the first mismatch seen so far (the writer stops early on it); `settled()` waits
 * for every verdict and throws the first mismatch in image order. Nothing counts as checked
 * before `settled()` returned.
 */
import { EdgekitError } from '../util/errors.js';
import type { HashChain, HashPool } from './hash-pool.js';
import type { CheckedRange } from './readback.js';

/** Digest comparisons that finish on the workers; the first mismatch in image order wins. */
class Verdicts {
  failure?: Error;
  private all: Array<Promise<Error | undefined>> = [];

  add(digest: Promise<string>, expected: string, mismatch: () => EdgekitError): void {
    const verdict = digest.then(
      (got) => (got === expected ? undefined : mismatch()),
      (err: Error) => err,
    );
    this.all.push(
      verdict.then((e) => {
        if (e) this.failure ??= e;
        return e;
      }),
    );
  }

  fail(err: EdgekitError): void {
    this.failure ??= err;
    this.all.push(Promise.resolve(err));
  }

  async settled(): Promise<void> {
    for (const e of await Promise.all(this.all)) if (e) throw e;
  }
}

export class RangeCheck {
  private i = 0;
  private hash?: HashChain;
  private seen = 0;
  private verdicts = new Verdicts();

  constructor(
    private ranges: CheckedRange[],
    private where: string,
    private pool: HashPool,
  ) {}

  get failure(): Error | undefined {
    return this.verdicts.failure;
  }

  /** `data` holds image bytes [abs, abs + data.length); calls come in increasing order. */
  consume(abs: number, data: Buffer, pending: Array<Promise<void>>): void {
    const end = abs + data.length;
    while (this.i < this.ranges.length) {
      const r = this.ranges[this.i];
      if (r.start >= end) return;
      const from = Math.max(r.start, abs);
      const to = Math.min(r.end, end);
      if (to > from) {
        this.hash ??= this.pool.chain(r.end - r.start);
        pending.push(this.hash.update(data.subarray(from - abs, to - abs)));
        this.seen += to - from;
      }
      if (to < r.end) return;
      const mismatch = () =>
        new EdgekitError(
          `${this.where}: data does not match the block map in blocks ${r.start / 4096}-${Math.ceil(r.end / 4096) - 1} (bytes ${r.start}-${r.end - 1}): the image is corrupt or the .bmap is another image's`,
        );
      if (this.seen !== r.end - r.start || !this.hash) this.verdicts.fail(mismatch());
      else this.verdicts.add(this.hash.digest(), r.sha256, mismatch);
      this.i++;
      this.hash = undefined;
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

  settled(): Promise<void> {
    return this.verdicts.settled();
  }
}

export interface SignedRegion {
  name: string;
  offset: number;
  size: number;
  sha256: string;
}

export class RegionCheck {
  private regions: SignedRegion[];
  private i = 0;
  private pos: number; // image bytes before this are accounted for in the current region
  private hash?: HashChain;
  private verdicts = new Verdicts();

  constructor(
    regions: SignedRegion[],
    private where: string,
    private pool: HashPool,
  ) {
    this.regions = [...regions].sort((a, b) => a.offset - b.offset);
    for (let k = 1; k < this.regions.length; k++) {
      const p = this.regions[k - 1];
      if (p.offset + p.size > this.regions[k].offset) throw new EdgekitError(`${where}: signed regions ${p.name} and ${this.regions[k].name} overlap`);
    }
    this.pos = this.regions[0]?.offset ?? 0;
  }

  get failure(): Error | undefined {
    return this.verdicts.failure;
  }

  consume(abs: number, data: Buffer, pending: Array<Promise<void>>): void {
    this.advance(abs, data, pending);
  }

  /** Whether bytes [start, end) lie inside one signed region. */
  covers(start: number, end: number): boolean {
    return this.regions.some((r) => r.offset <= start && end <= r.offset + r.size);
  }

  /** Zero-fills the rest of every region up to `imageSize` and waits for every region's verdict. */
  async finish(imageSize: number): Promise<void> {
    const pending: Array<Promise<void>> = [];
    this.advance(imageSize, Buffer.alloc(0), pending);
    await Promise.all(pending);
    if (this.i < this.regions.length) {
      const r = this.regions[this.i];
      throw new EdgekitError(`${this.where}: signed region ${r.name} ends at byte ${r.offset + r.size}, past the image's end (${imageSize})`);
    }
    await this.verdicts.settled();
  }

  private advance(abs: number, data: Buffer, pending: Array<Promise<void>>): void {
    const end = abs + data.length;
    while (this.i < this.regions.length) {
      const r = this.regions[this.i];
      const rEnd = r.offset + r.size;
      if (this.pos < r.offset) this.pos = r.offset;
      // A region's chain goes to a worker when its first bytes do: by then the previous region's
      // bytes are queued, and the least busy worker is the other one.
      const chain = () => (this.hash ??= this.pool.chain(r.size));
      // Bytes of the region before `abs` were not written: zeros.
      const gapEnd = Math.min(abs, rEnd);
      if (this.pos < gapEnd) {
        pending.push(chain().zeros(gapEnd - this.pos));
        this.pos = gapEnd;
      }
      const from = Math.max(this.pos, abs);
      const to = Math.min(rEnd, end);
      if (to > from) {
        pending.push(chain().update(data.subarray(from - abs, to - abs)));
        this.pos = to;
      }
      if (this.pos < rEnd) return;
      this.verdicts.add(
        chain().digest(),
        r.sha256,
        () =>
          new EdgekitError(
            `${this.where}: signed region ${r.name} (bytes ${r.offset}-${rEnd - 1}) does not match the signed manifest: the image was altered after signing`,
          ),
      );
      this.i++;
      this.hash = undefined;
    }
  }
}
