/**
 * The flash engine: one image, read once, written to several targets at the same time.
 *
 *  1. The first MiB of the (decompressed) image is read: it holds the signed manifest, which is
 *     checked against the operator's key before anything is written.
 *  2. Only the blocks the .bmap maps are written (without one, the non-zero 4 KiB blocks), in
 *     large aligned pieces at their offsets, to every target at once. A small ring of shared
 *     buffers keeps three things going at once: reading (or decompressing) the next piece, writing
 *     the pieces read (several writes in flight), and hashing them on worker threads
 *     (src/flash/hash-pool.ts) against each bmap range's sha256 and each signed region's sha256.
 *     A piece is written as soon as it is read, before its hash is known: a mismatch fails the
 *     flash, and nothing is a success until every verdict is in.
 *  3. Every written range is read back from each target bypassing the page cache and compared.
 *  4. Per-device settings go into the config partition (src/flash/device-config.ts).
 * A target that fails (I/O error, read-back mismatch) fails alone; a source that fails (corrupt,
 * truncated, wrong signature) fails them all. Nothing is reported as a success unless all of it held.
 */
import { createHash, type Hash, type KeyObject } from 'node:crypto';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { parseBmap, type BlockMap } from '../image/bmap.js';
import {
  EMBEDDED_MANIFEST_LIMIT,
  EMBEDDED_MANIFEST_OFFSET,
  readEmbeddedManifest,
  type ImageManifest,
  type SignedManifest,
} from '../image/manifest.js';
import { verifyDocument } from '../sign/signed.js';
import { EdgekitError } from '../util/errors.js';
import type { ProgressEvent } from '../util/progress.js';
import { alignedBuffers } from './aligned.js';
import { BufferPool } from './buffer-pool.js';
import { RangeCheck, RegionCheck } from './hash-check.js';
import { HashPool } from './hash-pool.js';
import { readBack, type CheckedRange } from './readback.js';
import type { ImageSource } from './source.js';
import { FlashTarget } from './target.js';

export interface FlashOptions {
  source: ImageSource;
  targets: string[];
  publicKey?: KeyObject;
  /** Write without checking the signature (the CLI says so loudly). */
  insecure?: boolean;
  /** Read every written range back and compare (default true). */
  verify?: boolean;
  /** Per-device settings for the config partition, written after the target is verified. */
  settings?: (target: string, index: number) => Record<string, string> | undefined;
  progress?: (target: string, ev: ProgressEvent) => void;
  /** Runs after the manifest is checked and before anything is written (target safety checks). */
  beforeWrite?: (image: FlashImageInfo) => Promise<void>;
  /** How settings are written; writeDeviceConfig unless a caller replaces it. */
  writeConfig?: (target: string, settings: Record<string, string>) => Promise<void>;
  /**
   * The hashing workers, when the caller started them earlier (they take tens of ms to start);
   * the caller closes them. Without it flashImage starts and closes its own.
   */
  hashes?: HashPool;
}

export interface FlashImageInfo {
  manifest: ImageManifest;
  imageSize: number;
  /** 'valid', or 'skipped' with --insecure. */
  signature: 'valid' | 'skipped';
  /** Bytes the block map maps; undefined without a block map (non-zero blocks are found while writing). */
  mappedBytes?: number;
  /** sha256 of the .bmap text, when there is one. */
  bmapSha256?: string;
}

export interface FlashResult {
  target: string;
  ok: boolean;
  bytesWritten: number;
  seconds: number;
  /** Digest of the data written: sha256 of the written ranges' sha256s (see digestOfRanges). */
  sha256: string;
  error?: string;
  /** Read back and compared; 'skipped' with verify: false. */
  verified: boolean | 'skipped';
  /** How the read-back read: bypassing the page cache ('direct') or through it ('page-cache'). */
  readBack?: 'direct' | 'page-cache';
  notes: string[];
}

/** Bytes read before writing: the embedded manifest lies within the first MiB. */
const HEAD_SIZE = EMBEDDED_MANIFEST_OFFSET + EMBEDDED_MANIFEST_LIMIT;
/** One write: large enough that a USB card sees long sequential writes. */
const PIECE = 8 << 20;
/**
 * Buffers in the ring for one target (two more per extra target): one being read, the others
 * written and hashed. Enough to keep writing while the hashing workers start (tens of ms).
 */
const RING = 8;
/** Mapped ranges closer than this are written as one (the zeros between cost less than a seek). */
const MERGE_GAP = 256 << 10;
const BLOCK = 4096;

export async function flashImage(opts: FlashOptions): Promise<FlashResult[]> {
  const started = performance.now();
  const src = opts.source;
  if (opts.targets.length === 0) throw new EdgekitError('no target to flash: give at least one --to');
  await refuseSameFiles(opts.targets, src);
  // Started first: the workers boot while the manifest is read and checked.
  const hashes = opts.hashes ?? new HashPool();
  let input: ImageInput | undefined;
  let targets: FlashTarget[] = [];
  try {
    input = await ImageInput.open(src);
    // 1. The manifest, before a byte is written.
    const head = await input.head(HEAD_SIZE);
    const doc = await manifestFrom(head, src.name);
    if (opts.publicKey) {
      const sig = verifyDocument(doc, opts.publicKey);
      if (!sig.ok) throw new EdgekitError(`${src.name}: refusing to flash: manifest signature ${sig.reason}`);
    } else if (!opts.insecure) {
      throw new EdgekitError(`${src.name}: no public key to check the image's signature with: pass --pubkey <file> (or --insecure)`);
    }
    const manifest = doc.signed;
    const imageSize = manifest.image.size;
    const bmap = src.bmapText !== undefined ? blockMapOf(src, imageSize) : undefined;
    const ranges = bmap ? byteRanges(bmap, imageSize) : undefined;
    const info: FlashImageInfo = {
      manifest,
      imageSize,
      signature: opts.publicKey ? 'valid' : 'skipped',
      mappedBytes: ranges?.reduce((n, r) => n + r.end - r.start, 0),
      bmapSha256: src.bmapText !== undefined ? createHash('sha256').update(src.bmapText).digest('hex') : undefined,
    };
    await opts.beforeWrite?.(info);

    // 2. Write.
    const opened = await Promise.all(
      opts.targets.map((path) => FlashTarget.open(path, imageSize).catch((err: unknown) => err as Error)),
    );
    const openErrors = new Map<string, string>();
    targets = opened.flatMap((t, i) => {
      if (t instanceof FlashTarget) return [t];
      openErrors.set(opts.targets[i], t instanceof EdgekitError ? t.message : `${opts.targets[i]}: ${t.message}`);
      return [];
    });
    const seconds = new Map<string, number>();
    const elapsed = () => Math.round(performance.now() - started) / 1000;
    const regionCheck = new RegionCheck([...manifest.regions, ...manifest.payloads], src.name, hashes);
    const writer = new Fanout(targets, (t) => opts.progress?.(t.path, { phase: 'write', done: t.bytesWritten, total: writer.total }));
    let sourceError: string | undefined;
    let written: { ranges: CheckedRange[]; sha256: string } = { ranges: [], sha256: '' };
    try {
      written = ranges
        ? await writeMapped(input, ranges, writer, regionCheck, hashes, src.name)
        : await writeNonZero(input, imageSize, writer, regionCheck);
      // With every target failed the writing stopped early: each target holds its own error, and
      // the unread rest of the image must not be reported as a mismatch.
      if (writer.live) await regionCheck.finish(imageSize);
    } catch (err) {
      sourceError = describeSourceError(err, src);
    }
    await writer.drain();
    // A used card holds old data where the image has unmapped zeros; inside signed regions those
    // zeros are part of what the signature covers, so devices get them written (files are holes).
    const zeros =
      sourceError || !targets.some((t) => t.kind === 'device')
        ? []
        : await zeroRangesInRegions([...manifest.regions, ...manifest.payloads], written.ranges, imageSize, hashes);
    await Promise.all(
      targets
        .filter((t) => t.kind === 'device')
        .map((t) => writeZeros(t, zeros, (done, total) => opts.progress?.(t.path, { phase: 'zero', done, total }))),
    );
    await Promise.all(targets.map((t) => t.finish()));
    for (const t of targets) if (!t.ok || sourceError) seconds.set(t.path, elapsed());

    // 3. Read back, 4. settings.
    const verify = opts.verify !== false;
    const readBackOf = new Map<string, 'direct' | 'page-cache'>();
    const verified = new Set<string>();
    await Promise.all(
      targets.map(async (t, index) => {
        if (!t.ok || sourceError) return;
        if (verify) {
          const check = t.kind === 'device' ? [...written.ranges, ...zeros].sort((a, b) => a.start - b.start) : written.ranges;
          const total = check.reduce((n, r) => n + r.end - r.start, 0);
          const rb = await readBack(t.path, check, { hashes, onBytes: (done) => opts.progress?.(t.path, { phase: 'verify', done, total }) });
          readBackOf.set(t.path, rb.direct ? 'direct' : 'page-cache');
          if (!rb.direct) t.notes.push(`${t.path}: O_DIRECT refused for reading: read back through the page cache`);
          if (!rb.ok) {
            t.failure = rb.error;
            seconds.set(t.path, elapsed());
            return;
          }
          verified.add(t.path);
        }
        const settings = opts.settings?.(t.path, opts.targets.indexOf(t.path) >= 0 ? opts.targets.indexOf(t.path) : index);
        if (settings && Object.keys(settings).length) {
          opts.progress?.(t.path, { phase: 'config' });
          try {
            // The FAT editor loads only when there are settings to write.
            const write = opts.writeConfig ?? (await import('./device-config.js')).writeDeviceConfig;
            await write(t.path, settings);
          } catch (err) {
            t.failure = err instanceof EdgekitError ? err.message : `${t.path}: writing the device settings failed: ${(err as Error).message}`;
          }
        }
        seconds.set(t.path, elapsed());
      }),
    );

    return opts.targets.map((path): FlashResult => {
      const t = targets.find((x) => x.path === path);
      const error = openErrors.get(path) ?? sourceError ?? t?.failure;
      return {
        target: path,
        ok: error === undefined,
        bytesWritten: t?.bytesWritten ?? 0,
        seconds: seconds.get(path) ?? elapsed(),
        sha256: written.sha256,
        ...(error !== undefined ? { error } : {}),
        verified: verify ? verified.has(path) : 'skipped',
        ...(readBackOf.has(path) ? { readBack: readBackOf.get(path) } : {}),
        notes: [
          ...(opts.publicKey ? [] : ['signature NOT checked (--insecure)']),
          ...(ranges ? [] : ['no block map: wrote every non-zero 4 KiB block; the data was checked against the signed manifest only']),
          ...(t?.notes ?? []),
        ],
      };
    });
  } finally {
    input?.close();
    await Promise.all(targets.map((t) => t.close()));
    if (!opts.hashes) await hashes.close();
  }
}

/** Two targets that are one file or device, or a target that is the image itself, would corrupt each other. */
async function refuseSameFiles(targets: string[], src: ImageSource): Promise<void> {
  const seen = new Map<string, string>();
  const idOf = async (p: string) => {
    const s = await stat(p).catch(() => undefined);
    return s ? `${s.isBlockDevice() ? `b${s.rdev}` : `${s.dev}:${s.ino}`}` : `path:${resolve(p)}`;
  };
  if (!/^https?:\/\//i.test(src.location)) seen.set(await idOf(src.location), `the image ${src.location}`);
  for (const t of targets) {
    const id = await idOf(t);
    const other = seen.get(id);
    if (other) throw new EdgekitError(`${t}: the same file or device as ${other}`);
    seen.set(id, t);
  }
}

// ---- zeros inside signed regions -----------------------------------------------------------

/** The 4 KiB blocks inside signed regions that no written range covers, with their (zero) sha256. */
export async function zeroRangesInRegions(
  regions: Array<{ offset: number; size: number }>,
  written: Array<{ start: number; end: number }>,
  imageSize: number,
  hashes: HashPool,
): Promise<CheckedRange[]> {
  const gaps: Array<{ start: number; end: number }> = [];
  const sorted = [...written].sort((a, b) => a.start - b.start);
  for (const r of regions) {
    let pos = r.offset;
    const end = Math.min(r.offset + r.size, imageSize);
    for (const w of sorted) {
      if (w.end <= pos) continue;
      if (w.start >= end) break;
      if (w.start > pos) gaps.push({ start: pos, end: w.start });
      pos = Math.max(pos, w.end);
    }
    if (pos < end) gaps.push({ start: pos, end });
  }
  // Whole blocks: an unmapped block is all zeros in the image, so widening to its edges is exact.
  const blocks = gaps
    .map((g) => ({ start: Math.floor(g.start / BLOCK) * BLOCK, end: Math.min(Math.ceil(g.end / BLOCK) * BLOCK, imageSize) }))
    .sort((a, b) => a.start - b.start);
  const merged: Array<{ start: number; end: number }> = [];
  for (const b of blocks) {
    const last = merged[merged.length - 1];
    if (last && b.start <= last.end) last.end = Math.max(last.end, b.end);
    else merged.push({ ...b });
  }
  return Promise.all(
    merged.map(async (m) => {
      const chain = hashes.chain(m.end - m.start);
      const [, sha256] = await Promise.all([chain.zeros(m.end - m.start), chain.digest()]);
      return { ...m, sha256 };
    }),
  );
}

async function writeZeros(t: FlashTarget, ranges: CheckedRange[], progress: (done: number, total: number) => void): Promise<void> {
  if (!ranges.length || !t.ok) return;
  const [zero] = alignedBuffers(1, PIECE); // a fresh WebAssembly memory is all zeros
  const total = ranges.reduce((n, r) => n + r.end - r.start, 0);
  let done = 0;
  for (const r of ranges) {
    for (let pos = r.start; pos < r.end && t.ok; pos += PIECE) {
      const len = Math.min(PIECE, r.end - pos);
      await t.write(zero, 0, len, pos);
      done += len;
      progress(done, total);
    }
  }
}

// ---- the manifest and the block map --------------------------------------------------------

/** readEmbeddedManifest reads through a FileHandle; the head is served from memory. */
async function manifestFrom(head: Buffer, where: string): Promise<SignedManifest> {
  const fromHead = {
    read: async (buf: Buffer, off: number, len: number, pos: number) => {
      const n = Math.max(0, Math.min(len, head.length - pos));
      head.copy(buf, off, pos, pos + n);
      return { bytesRead: n, buffer: buf };
    },
  } as unknown as FileHandle;
  return readEmbeddedManifest(fromHead, where);
}

function blockMapOf(src: ImageSource, imageSize: number): BlockMap {
  let map: BlockMap;
  try {
    map = parseBmap(src.bmapText!);
  } catch (err) {
    throw new EdgekitError(`${src.bmapLocation}: not a block map (${(err as Error).message})`);
  }
  if (map.imageSize !== imageSize) {
    throw new EdgekitError(`${src.bmapLocation}: block map of a ${map.imageSize}-byte image, but ${src.name} is ${imageSize} bytes: another image's .bmap`);
  }
  if (map.blockSize % 512 !== 0) throw new EdgekitError(`${src.bmapLocation}: block size ${map.blockSize} is not a multiple of 512`);
  return map;
}

function byteRanges(map: BlockMap, imageSize: number): CheckedRange[] {
  const out = map.ranges
    .map((r) => ({ start: r.first * map.blockSize, end: Math.min((r.last + 1) * map.blockSize, imageSize), sha256: r.sha256 }))
    .sort((a, b) => a.start - b.start);
  for (let i = 0; i < out.length; i++) {
    if (out[i].start >= out[i].end || (i > 0 && out[i].start < out[i - 1].end)) {
      throw new EdgekitError(`block map: range at byte ${out[i].start} is empty, overlaps another or lies past the image's end`);
    }
  }
  return out;
}

function describeSourceError(err: unknown, src: ImageSource): string {
  if (err instanceof EdgekitError) return err.message;
  const e = err as NodeJS.ErrnoException;
  return `${src.location}: cannot read the image: ${e.code ? `${e.code} ` : ''}${e.message}`;
}

// ---- reading the source ----------------------------------------------------------------------

/** The decompressed image as a stream, or, for a raw local file, as a file read at offsets. */
class ImageInput {
  private pending: Buffer[] = [];
  private iterator?: AsyncIterator<Buffer>;
  private constructor(
    readonly file: FileHandle | undefined,
    private stream: Readable | undefined,
  ) {
    if (stream) this.iterator = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  static async open(src: ImageSource): Promise<ImageInput> {
    if (src.path && src.bmapText !== undefined) return new ImageInput(await open(src.path, 'r'), undefined);
    if (src.path) return new ImageInput(undefined, src.stream());
    return new ImageInput(undefined, src.stream());
  }

  /** The first `n` bytes (fewer if the image is shorter); a stream keeps them for chunks(). */
  async head(n: number): Promise<Buffer> {
    if (this.file) {
      const buf = Buffer.alloc(n);
      const { bytesRead } = await this.file.read(buf, 0, n, 0);
      return buf.subarray(0, bytesRead);
    }
    let have = this.pending.reduce((s, c) => s + c.length, 0);
    while (have < n) {
      const next = await this.iterator!.next();
      if (next.done) break;
      this.pending.push(next.value);
      have += next.value.length;
    }
    return Buffer.concat(this.pending).subarray(0, n);
  }

  /** The stream's chunks from byte 0 (the head's included). */
  async *chunks(): AsyncGenerator<Buffer> {
    while (this.pending.length) yield this.pending.shift()!;
    for (;;) {
      const next = await this.iterator!.next();
      if (next.done) return;
      yield next.value;
    }
  }

  close(): void {
    this.stream?.destroy();
    void this.file?.close().catch(() => {});
  }
}

// ---- writing to every target ---------------------------------------------------------------

/**
 * Hands each filled buffer to every live target; the buffer returns to the ring when every target
 * wrote it and the workers hashed it. The buffers are shared memory the workers hash in place.
 */
class Fanout {
  readonly pool: BufferPool;
  total: number | undefined = 0;
  private inflight = new Set<Promise<void>>();

  constructor(
    private targets: FlashTarget[],
    private onWritten: (t: FlashTarget) => void,
  ) {
    this.pool = new BufferPool(RING + 2 * Math.max(0, targets.length - 1), PIECE, { shared: true });
  }

  get live(): boolean {
    return this.targets.some((t) => t.ok);
  }

  /**
   * Queues pieces of `buf` (a pool buffer) for their positions; throws once every target failed.
   * `hashed` settles when the workers are done with the buffer (a failed hash is reported by the
   * checks' verdicts, not here).
   */
  write(buf: Buffer, pieces: Array<{ offset: number; len: number; position: number }>, hashed: Promise<unknown>): void {
    if (!this.live) throw new AllTargetsFailed();
    const writeAll = async (t: FlashTarget) => {
      for (const p of pieces) await t.write(buf, p.offset, p.len, p.position);
      this.onWritten(t);
    };
    const job: Promise<void> = Promise.allSettled([hashed, ...this.targets.filter((t) => t.ok).map(writeAll)]).then(() => {
      this.pool.give(buf);
      this.inflight.delete(job);
    });
    this.inflight.add(job);
  }

  async drain(): Promise<void> {
    while (this.inflight.size) await Promise.all([...this.inflight]);
  }
}

/** Stops the reading when no target is left to write to; each target already holds its own error. */
class AllTargetsFailed extends Error {}

/** Merges ranges less than MERGE_GAP apart into write extents. */
function extentsOf(ranges: CheckedRange[]): Array<{ start: number; end: number }> {
  const out: Array<{ start: number; end: number }> = [];
  for (const r of ranges) {
    const last = out[out.length - 1];
    if (last && r.start - last.end <= MERGE_GAP) last.end = r.end;
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** Writes the block map's ranges; returns them (for read-back) and the sha256 of their data. */
async function writeMapped(
  input: ImageInput,
  ranges: CheckedRange[],
  out: Fanout,
  regions: RegionCheck,
  hashes: HashPool,
  where: string,
): Promise<{ ranges: CheckedRange[]; sha256: string }> {
  // Bytes inside a signed region are checked once, against the signed hash (the stronger check);
  // the block map's own hashes are checked for the rest (config partition, manifest area), as
  // bmaptool would. One sha256 pass over the data instead of two.
  const check = new RangeCheck(ranges.filter((r) => !regions.covers(r.start, r.end)), where, hashes);
  const extents = extentsOf(ranges);
  out.total = extents.reduce((n, e) => n + e.end - e.start, 0);
  // Each filled piece goes to the hashing workers (range hashes, signed regions) and, at the same
  // time, to the targets. A mismatch already known stops the reading.
  const send = (buf: Buffer, abs: number, len: number) => {
    const failure = check.failure ?? regions.failure;
    if (failure || !out.live) {
      out.pool.give(buf);
      throw failure ?? new AllTargetsFailed();
    }
    const data = buf.subarray(0, len);
    const pending: Array<Promise<void>> = [];
    check.consume(abs, data, pending);
    regions.consume(abs, data, pending);
    out.write(buf, [{ offset: 0, len, position: abs }], Promise.all(pending));
  };
  try {
    if (input.file) {
      const file = input.file;
      // Read one piece ahead: the next read runs on the I/O threads while this one is handed on.
      const pieces: Array<{ pos: number; len: number; end: number }> = [];
      for (const e of extents) {
        for (let pos = e.start; pos < e.end; pos += PIECE) pieces.push({ pos, len: Math.min(PIECE, e.end - pos), end: e.end });
      }
      const readPiece = async (k: number) => {
        const buf = await out.pool.take();
        try {
          const { bytesRead } = await file.read(buf, 0, pieces[k].len, pieces[k].pos);
          return { buf, bytesRead };
        } catch (err) {
          out.pool.give(buf);
          throw err;
        }
      };
      let next = pieces.length ? readPiece(0) : undefined;
      try {
        for (let k = 0; k < pieces.length; k++) {
          const { buf, bytesRead } = await next!;
          next = k + 1 < pieces.length ? readPiece(k + 1) : undefined;
          const { pos, len, end } = pieces[k];
          if (bytesRead < len) {
            out.pool.give(buf);
            throw new EdgekitError(`${where}: the image ends at byte ${pos + bytesRead}, but its block map has data up to byte ${end}: the image is truncated`);
          }
          send(buf, pos, len);
        }
      } finally {
        // A read still running when this stops must end before the file is closed under it.
        if (next) await next.then((r) => out.pool.give(r.buf), () => {});
      }
      check.finish(extents.length ? extents[extents.length - 1].end : 0);
      await check.settled();
      return { ranges, sha256: digestOfRanges(ranges) };
    }
    let ei = 0;
    let pos = 0;
    let cur: { buf: Buffer; start: number; fill: number } | undefined;
    for await (const chunk of input.chunks()) {
      let p = 0;
      while (p < chunk.length && ei < extents.length) {
        const e = extents[ei];
        const abs = pos + p;
        if (abs < e.start) {
          p += Math.min(chunk.length - p, e.start - abs);
          continue;
        }
        if (!cur) cur = { buf: await out.pool.take(), start: abs, fill: 0 };
        const n = Math.min(chunk.length - p, e.end - abs, cur.buf.length - cur.fill);
        chunk.copy(cur.buf, cur.fill, p, p + n);
        cur.fill += n;
        p += n;
        const extentDone = abs + n === e.end;
        if (extentDone || cur.fill === cur.buf.length) {
          const { buf, start, fill } = cur;
          cur = undefined;
          send(buf, start, fill);
        }
        if (extentDone) ei++;
      }
      pos += chunk.length;
      if (ei === extents.length) break; // the rest of the image is unmapped
    }
    if (cur) {
      out.pool.give(cur.buf);
      check.finish(pos);
    }
    check.finish(pos);
    await check.settled();
    return { ranges, sha256: digestOfRanges(ranges) };
  } catch (err) {
    if (err instanceof AllTargetsFailed) return { ranges, sha256: digestOfRanges(ranges) };
    throw err;
  }
}

/**
 * The written data's digest: sha256 of the ranges' sha256s (hex, one per line). Hashing the data a
 * third time would cost as much as writing it; the range digests already pin every byte, and
 * `grep -o 'chksum="[0-9a-f]*"' x.bmap | cut -d'"' -f2 | sha256sum` gives the same value.
 */
export function digestOfRanges(ranges: CheckedRange[]): string {
  return createHash('sha256')
    .update(ranges.map((r) => `${r.sha256}\n`).join(''))
    .digest('hex');
}

/** Without a block map: reads the whole image and writes its non-zero 4 KiB blocks. */
async function writeNonZero(
  input: ImageInput,
  imageSize: number,
  out: Fanout,
  regions: RegionCheck,
): Promise<{ ranges: CheckedRange[]; sha256: string }> {
  const ranges: CheckedRange[] = [];
  // The runs' own hashes (what the read-back compares with) stay on this thread: a run can be one
  // 4 KiB block, for which a message to a worker costs more than the hash.
  let open: { start: number; end: number; hash: Hash } | undefined;
  const close = () => {
    if (open) ranges.push({ start: open.start, end: open.end, sha256: open.hash.digest('hex') });
    open = undefined;
  };
  out.total = undefined; // not known until the whole image was read
  const zero = Buffer.alloc(BLOCK);
  // One buffer-full of image at a time; its non-zero runs are written from it in place.
  const flush = (buf: Buffer, start: number, fill: number): boolean => {
    if (regions.failure) throw regions.failure;
    let queued = false;
    let run = -1;
    const pending: Array<Promise<void>> = [];
    const emit = (from: number, to: number) => {
      const data = buf.subarray(from, to);
      regions.consume(start + from, data, pending);
      if (!open || open.end !== start + from) {
        close();
        open = { start: start + from, end: start + from, hash: createHash('sha256') };
      }
      open.hash.update(data);
      open.end = start + to;
      pieces.push({ from, to });
    };
    const pieces: Array<{ from: number; to: number }> = [];
    for (let o = 0; o < fill; o += BLOCK) {
      const len = Math.min(BLOCK, fill - o);
      const isZero = buf.compare(zero, 0, len, o, o + len) === 0;
      if (!isZero && run < 0) run = o;
      if (isZero && run >= 0) {
        emit(run, o);
        run = -1;
      }
    }
    if (run >= 0) emit(run, fill);
    if (pieces.length) {
      queued = true;
      // Every run is written from `buf` in place; the buffer returns to the pool after the last.
      out.write(
        buf,
        pieces.map((p) => ({ offset: p.from, len: p.to - p.from, position: start + p.from })),
        Promise.all(pending),
      );
    }
    return queued;
  };
  try {
    let pos = 0;
    const take = async () => ({ buf: await out.pool.take(), start: pos, fill: 0 });
    if (input.file) {
      while (pos < imageSize) {
        const cur = await take();
        const { bytesRead } = await input.file.read(cur.buf, 0, Math.min(cur.buf.length, imageSize - pos), pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
        if (!flush(cur.buf, cur.start, bytesRead)) out.pool.give(cur.buf);
      }
    } else {
      let cur = await take();
      for await (const chunk of input.chunks()) {
        for (let p = 0; p < chunk.length; ) {
          const n = Math.min(chunk.length - p, cur.buf.length - cur.fill);
          chunk.copy(cur.buf, cur.fill, p, p + n);
          cur.fill += n;
          p += n;
          pos += n;
          if (cur.fill === cur.buf.length) {
            if (!flush(cur.buf, cur.start, cur.fill)) out.pool.give(cur.buf);
            cur = await take();
          }
        }
      }
      if (!flush(cur.buf, cur.start, cur.fill)) out.pool.give(cur.buf);
    }
    if (pos < imageSize) {
      throw new EdgekitError(`the image ends at byte ${pos}, but its manifest says it is ${imageSize} bytes: the image is truncated`);
    }
  } catch (err) {
    if (!(err instanceof AllTargetsFailed)) throw err;
  }
  close();
  return { ranges, sha256: digestOfRanges(ranges) };
}
