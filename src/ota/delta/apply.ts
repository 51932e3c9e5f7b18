/**
 * Device side: rebuilds the target root payload into the inactive slot from a delta (format.ts)
 * and the active slot. Pure node: modules and the LZ4 codec's WebAssembly module, no native addons.
 *
 * Memory stays bounded whatever the payload size: the three streams are decoded as they are read,
 * the active slot is read by position a block at a time (a few decoded blocks are cached, in
 * buffers that are reused), rebuilt blocks are LZ4-compressed into one reused buffer (a gzip root's
 * are deflated on libuv's pool, at most IN_FLIGHT at once), and output goes out in 1 MiB writes.
 * The dm-verity tree is hashed as the data streams past (32 bytes per 4 KiB).
 *
 * Nothing is trusted until the end: the active slot must hash to the delta's `from`, the delta
 * must name the expected target, every rebuilt block must come out with the publisher's size and
 * CRC, and the whole output must hash to the signed target sha256. On any failure the slot's first
 * 4 KiB are zeroed, so a half-written slot never looks like a filesystem.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, readSync, writeSync } from 'node:fs';
import { open, rm, mkdtemp, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline, type Readable } from 'node:stream';
import { pipeline as pipelineAsync } from 'node:stream/promises';
import { brotliDecompressSync, createBrotliDecompress, deflate } from 'node:zlib';
import { decompressBlock, encoderOf } from '../../fs/squashfs/codec.js';
import { lz4Bound, lz4Compress } from '../../fs/squashfs/lz4.js';
import { crc32 } from '../../util/crc32.js';
import { EdgekitError } from '../../util/errors.js';
import { ByteReader, DeltaFormatError, FORMAT, MAGIC, Op, type DeltaHeader, type DeltaSource } from './format.js';
import { VerityHasher } from './verity-stream.js';

/** A slot: a block device or file, optionally at a byte offset (a partition inside a disk image). */
export type SlotTarget = string | { path: string; offset?: number };
export type WritableTarget = SlotTarget;

export interface ApplyDeltaOptions {
  delta: Readable | string;
  /** The running slot's payload (read only). */
  activePayload: SlotTarget;
  /** The inactive slot, written front to back. */
  out: WritableTarget;
  expectedSha256: string;
  expectedSize: number;
}

const DATA_RAW = 1 << 24;
const IN_FLIGHT = 4;
const CHUNK = 1 << 20;
const MAX_HEADER = 64 << 20;
const MAX_BLOCK = 1 << 20;
const CACHED_BLOCKS = 24;
const COMPRESSIONS = new Set(['gzip', 'lz4', 'none']);

const slotPath = (t: SlotTarget) => (typeof t === 'string' ? t : t.path);
const slotOffset = (t: SlotTarget) => (typeof t === 'string' ? 0 : (t.offset ?? 0));

async function readExact(fh: FileHandle, buf: Buffer, pos: number, what: string): Promise<Buffer> {
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, pos + got);
    if (bytesRead === 0) throw new EdgekitError(`${what} ends at byte ${pos + got}`);
    got += bytesRead;
  }
  return buf;
}

/**
 * Positional reads and writes inside the apply loop are synchronous: the loop is all this process
 * does while it runs (the streams it awaits still give the event loop its turns), and a promise
 * per read would cost more than the read.
 */
function readExactSync(fd: number, buf: Buffer, pos: number, what: string): Buffer {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, pos + got);
    if (n === 0) throw new EdgekitError(`${what} ends at byte ${pos + got}`);
    got += n;
  }
  return buf;
}

function writeAllSync(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length; ) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

/** Uncompressed bytes of old files, read from the active slot block by block. */
class OldFiles {
  /** Recently decoded blocks by offset, oldest first; each lives in one of a few reused buffers. */
  private readonly cache = new Map<number, { data: Buffer; buf: Buffer }>();
  private readonly storedBuf = Buffer.allocUnsafe(MAX_BLOCK);

  constructor(
    private readonly fh: FileHandle,
    private readonly base: number,
    private readonly header: DeltaHeader,
    private readonly where: string,
  ) {}

  private block(offset: number, sizeWord: number, rawLength: number): Buffer {
    const hit = this.cache.get(offset);
    if (hit) return hit.data;
    let buf: Buffer;
    if (this.cache.size >= CACHED_BLOCKS) {
      const [oldest, entry] = this.cache.entries().next().value!;
      this.cache.delete(oldest);
      buf = entry.buf;
    } else buf = Buffer.allocUnsafe(this.header.source.blockSize);
    let data: Buffer;
    if (sizeWord === 0) data = buf.subarray(0, rawLength).fill(0);
    else {
      const len = sizeWord & ~DATA_RAW;
      if (len > MAX_BLOCK) throw new DeltaFormatError(`a source block of ${len} bytes`);
      if (sizeWord & DATA_RAW) data = readExactSync(this.fh.fd, buf.subarray(0, len), this.base + offset, this.where);
      else {
        const stored = readExactSync(this.fh.fd, this.storedBuf.subarray(0, len), this.base + offset, this.where);
        data = decompressBlock(this.header.source.codec, stored, rawLength, buf);
      }
    }
    this.cache.set(offset, { data, buf });
    return data;
  }

  /** Stored bytes of the active payload, as they are (copies bypass the block cache). */
  stored(off: number, into: Buffer): Buffer {
    return readExactSync(this.fh.fd, into, this.base + off, this.where);
  }

  read(src: number, off: number, len: number, into: Buffer, at: number): void {
    const s: DeltaSource | undefined = this.header.sources[src];
    if (!s || off + len > s.size) throw new DeltaFormatError(`piece ${src}:${off}+${len} is outside its source`);
    const bs = this.header.source.blockSize;
    while (len > 0) {
      const k = Math.floor(off / bs);
      let data: Buffer, inner: number;
      if (k < s.blocks.length) {
        data = this.block(s.blocks[k][0], s.blocks[k][1], Math.min(bs, s.size - k * bs));
        inner = off - k * bs;
      } else {
        if (!s.tail) throw new DeltaFormatError(`source ${src} has no tail`);
        data = this.block(s.tail[0], s.tail[1], bs);
        inner = s.tail[2] + off - s.blocks.length * bs;
      }
      const n = Math.min(len, data.length - inner);
      if (n <= 0) throw new DeltaFormatError(`source ${src} is shorter than its pieces`);
      copyBytes(data, inner, into, at, n);
      off += n;
      at += n;
      len -= n;
    }
  }
}

/** The inactive slot, written in order: hashed (sha256, and verity over the data part) as it goes. */
class SlotWriter {
  private readonly sha = createHash('sha256');
  // One fixed batch buffer: callers' buffers are copied, never kept, so they can be reused and
  // no garbage piles up between garbage collections (V8 collects ArrayBuffers late).
  private readonly batch = Buffer.allocUnsafe(CHUNK);
  private batchBytes = 0;
  private flushed = 0;
  position = 0;
  verity?: VerityHasher;
  verityEnd = 0;

  constructor(
    private readonly fh: FileHandle,
    private readonly base: number,
    private readonly limit: number,
  ) {}

  write(b: Buffer): void {
    if (this.position + b.length > this.limit) throw new DeltaFormatError(`writes past the target's ${this.limit} bytes`);
    this.sha.update(b);
    if (this.verity && this.position < this.verityEnd) this.verity.update(b.subarray(0, this.verityEnd - this.position));
    this.position += b.length;
    for (let at = 0; at < b.length; ) {
      const n = Math.min(b.length - at, CHUNK - this.batchBytes);
      b.copy(this.batch, this.batchBytes, at, at + n);
      this.batchBytes += n;
      at += n;
      if (this.batchBytes === CHUNK) this.flush();
    }
  }

  flush(): void {
    if (this.batchBytes === 0) return;
    writeAllSync(this.fh.fd, this.batch.subarray(0, this.batchBytes), this.base + this.flushed);
    this.flushed += this.batchBytes;
    this.batchBytes = 0;
  }

  digest(): string {
    return this.sha.digest('hex');
  }
}

/** Writes buffers in order while several of them are still being deflated. */
class Ordered {
  private readonly queue: Promise<Buffer>[] = [];
  constructor(private readonly out: SlotWriter) {}

  async push(p: Promise<Buffer>): Promise<void> {
    p.catch(() => undefined); // surfaced when awaited in order
    this.queue.push(p);
    while (this.queue.length >= IN_FLIGHT) this.out.write(await this.queue.shift()!);
  }
  async drain(): Promise<void> {
    while (this.queue.length) this.out.write(await this.queue.shift()!);
  }
  /** Anything still being deflated (callers skip the await of drain() when not: lz4 and none never queue). */
  get pending(): boolean {
    return this.queue.length > 0;
  }
}

function deflateAsync(data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => deflate(data, { level: 9 }, (err, out) => (err ? reject(err) : resolve(out))));
}

/**
 * raw[at + i] += diff[i] (mod 256) for i < n: bsdiff's difference bytes, most of them zero. Four
 * bytes per step where there are enough: the low 7 bits of each byte are added without carrying
 * into the next byte, and the top bits are XORed back in.
 */
function addBytes(raw: Buffer, at: number, diff: Buffer, from: number, n: number): void {
  let i = 0;
  if (n >= 64) {
    const r = new DataView(raw.buffer, raw.byteOffset + at, n);
    const d = new DataView(diff.buffer, diff.byteOffset + from, n);
    for (; i + 4 <= n; i += 4) {
      const b = d.getInt32(i);
      if (b === 0) continue;
      const a = r.getInt32(i);
      r.setInt32(i, ((a & 0x7f7f7f7f) + (b & 0x7f7f7f7f)) ^ ((a ^ b) & 0x80808080));
    }
  }
  for (let j = at + i, k = from + i; i < n; i++, j++, k++) raw[j] = (raw[j] + diff[k]) & 0xff;
}

/** Below this many bytes a loop beats Buffer.copy (a call into C++ each). */
const SHORT_COPY = 64;

function copyBytes(src: Buffer, from: number, dst: Buffer, to: number, n: number): void {
  if (n >= SHORT_COPY) src.copy(dst, to, from, from + n);
  else for (let i = 0; i < n; i++) dst[to + i] = src[from + i];
}

function compressInto(raw: Buffer, into: Buffer): Buffer {
  return into.subarray(0, lz4Compress(raw, into));
}

/** One brotli stream of the delta body, read as chunks; close() frees it whether or not it was used up. */
function streamOf(path: string, start: number, length: number): { chunks: AsyncIterator<Buffer>; close: () => void } {
  if (length === 0) return { chunks: (async function* () {})(), close: () => undefined };
  const file = createReadStream(path, { start, end: start + length - 1 });
  const dec = createBrotliDecompress({ chunkSize: 1 << 16 });
  pipeline(file, dec, () => undefined);
  // Errors reach the apply through the iterator. When one stream fails, the apply stops reading
  // the others, whose decoders can still fail later (a damaged stream's end comes at the flush,
  // after pipeline() let go of it): with no listener that would end the agent's process.
  dec.on('error', () => undefined);
  return {
    chunks: dec[Symbol.asyncIterator](),
    close: () => {
      file.destroy();
      dec.destroy();
    },
  };
}

async function readHeader(path: string): Promise<{ header: DeltaHeader; bodyStart: number; size: number }> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`delta ${path}: cannot open: ${err.code ?? err.message}`);
  });
  try {
    const size = (await fh.stat()).size;
    const head = Buffer.alloc(12);
    const { bytesRead } = await fh.read(head, 0, 12, 0);
    if (bytesRead < 12 || head.toString('latin1', 0, 8) !== MAGIC) throw new DeltaFormatError('not an edgekit delta');
    const len = head.readUInt32LE(8);
    if (len > MAX_HEADER || 12 + len > size) throw new DeltaFormatError('header is truncated');
    const packed = await readExact(fh, Buffer.alloc(len), 12, `delta ${path}`);
    const header = JSON.parse(brotliDecompressSync(packed).toString('utf8')) as DeltaHeader;
    if (header.format !== FORMAT) throw new DeltaFormatError(`format ${String(header.format)} is not ${FORMAT}`);
    if (!COMPRESSIONS.has(header.target?.compression) || !COMPRESSIONS.has(header.source?.codec) || !(header.source.blockSize <= MAX_BLOCK) || !(header.target.blockSize <= MAX_BLOCK))
      throw new DeltaFormatError('header names an unknown compression or block size');
    const s = header.streams;
    if (12 + len + s.ops + s.add + s.literal !== size) throw new DeltaFormatError(`is ${size} bytes, its header describes ${12 + len + s.ops + s.add + s.literal}`);
    return { header, bodyStart: 12 + len, size };
  } finally {
    await fh.close();
  }
}

/** Reads of the active slot while hashing it: two buffers, so the next read runs while one is hashed. */
const HASH_READ = 1 << 18;

async function sha256Range(fh: FileHandle, base: number, length: number, what: string): Promise<string> {
  const hash = createHash('sha256');
  const bufs = [Buffer.allocUnsafe(HASH_READ), Buffer.allocUnsafe(HASH_READ)];
  const readAt = (pos: number, i: number) => readExact(fh, bufs[i].subarray(0, Math.min(HASH_READ, length - pos)), base + pos, what);
  let next = length > 0 ? readAt(0, 0) : undefined;
  for (let pos = 0, i = 0; next; pos += HASH_READ, i ^= 1) {
    const got = await next;
    next = pos + HASH_READ < length ? readAt(pos + HASH_READ, i ^ 1) : undefined;
    hash.update(got);
  }
  return hash.digest('hex');
}

async function spool(stream: Readable): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'edgekit-delta-'));
  const path = join(dir, 'delta');
  await pipelineAsync(stream, createWriteStream(path));
  return { path, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function applyDelta(opts: ApplyDeltaOptions): Promise<void> {
  if (typeof opts.delta !== 'string') {
    const spooled = await spool(opts.delta);
    try {
      return await applyDelta({ ...opts, delta: spooled.path });
    } finally {
      await spooled.cleanup();
    }
  }
  const deltaPath = opts.delta;
  const corrupt = (err: unknown): never => {
    if (err instanceof EdgekitError) throw err;
    const msg = err instanceof DeltaFormatError ? err.message : `${(err as Error).message}`;
    throw new EdgekitError(`delta ${deltaPath} is corrupt or truncated: ${msg}`);
  };

  const { header, bodyStart } = await readHeader(deltaPath).catch(corrupt);
  const mine = encoderOf(header.target.compression);
  if (header.target.encoder !== mine)
    throw new EdgekitError(`delta ${deltaPath}: its blocks are rebuilt with ${header.target.encoder}, this device compresses with ${mine}: install the full payload`);
  if (header.to.sha256 !== opts.expectedSha256.toLowerCase() || header.to.size !== opts.expectedSize)
    throw new EdgekitError(`delta ${deltaPath} builds ${header.to.sha256} (${header.to.size} bytes), not the expected target ${opts.expectedSha256} (${opts.expectedSize} bytes)`);

  const activeWhere = `active slot ${slotPath(opts.activePayload)}`;
  const active = await open(slotPath(opts.activePayload), 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${activeWhere}: cannot open: ${err.code ?? err.message}`);
  });
  try {
    const activeBase = slotOffset(opts.activePayload);
    const activeSha = await sha256Range(active, activeBase, header.from.size, activeWhere);
    if (activeSha !== header.from.sha256)
      throw new EdgekitError(`${activeWhere} holds ${activeSha}, not the release this delta starts from (${header.from.sha256})`);

    const outPath = slotPath(opts.out);
    const outBase = slotOffset(opts.out);
    const outFh = await open(outPath, 'r+').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return open(outPath, 'w+', 0o644);
      throw new EdgekitError(`inactive slot ${outPath}: cannot open: ${err.code ?? err.message}`);
    });
    let wrote = false;
    try {
      const out = new SlotWriter(outFh, outBase, header.to.size);
      if (header.verity) {
        out.verity = new VerityHasher(Buffer.from(header.verity.salt, 'hex'));
        out.verityEnd = header.verity.dataSize;
      }
      wrote = true;
      await run(deltaPath, bodyStart, header, new OldFiles(active, activeBase, header, activeWhere), out).catch(corrupt);
      out.flush();
      if (out.position !== header.to.size) corrupt(new DeltaFormatError(`wrote ${out.position} of ${header.to.size} bytes`));
      const sha = out.digest();
      if (sha !== opts.expectedSha256.toLowerCase())
        throw new EdgekitError(`delta ${deltaPath}: the rebuilt slot hashes to ${sha}, not the signed ${opts.expectedSha256}`);
      if (outBase === 0 && (await outFh.stat()).isFile()) await outFh.truncate(header.to.size);
      await outFh.sync();
    } catch (err) {
      // Leave nothing that looks like a filesystem behind.
      if (wrote) await outFh.write(Buffer.alloc(4096), 0, 4096, outBase).then(() => outFh.sync()).catch(() => undefined);
      throw err;
    } finally {
      await outFh.close();
    }
  } finally {
    await active.close();
  }
}

/** Enough ops-stream bytes for any one operation or piece (an op byte and a few varints). */
const OP_BYTES = 64;

async function run(path: string, bodyStart: number, header: DeltaHeader, old: OldFiles, out: SlotWriter): Promise<void> {
  const s = header.streams;
  const streams = [streamOf(path, bodyStart, s.ops), streamOf(path, bodyStart + s.ops, s.add), streamOf(path, bodyStart + s.ops + s.add, s.literal)];
  try {
    await rebuild(header, old, out, new ByteReader(streams[0].chunks, 'ops stream'), new ByteReader(streams[1].chunks, 'add stream'), new ByteReader(streams[2].chunks, 'literal stream'));
  } finally {
    for (const st of streams) st.close();
  }
}

async function rebuild(header: DeltaHeader, old: OldFiles, out: SlotWriter, ops: ByteReader, add: ByteReader, lit: ByteReader): Promise<void> {
  const ordered = new Ordered(out);
  let planned = 0; // target bytes queued so far
  const readEnd = new Float64Array(header.sources.length); // where the last piece read from each source ended
  const scratch = Buffer.allocUnsafe(CHUNK);
  const blockSize = header.target.blockSize;
  // LZ4 compresses here and now (a worker thread on the second core was measured: ~10 MiB more
  // peak memory, over the agent's budget); gzip deflates on libuv's pool, up to IN_FLIGHT at once.
  const rawRing = Array.from({ length: header.target.compression === 'gzip' ? IN_FLIGHT + 1 : 1 }, () => Buffer.allocUnsafe(blockSize));
  const lz4Out = header.target.compression === 'lz4' ? Buffer.allocUnsafe(lz4Bound(blockSize)) : undefined;
  let ringAt = 0;
  const plan = (n: number) => {
    planned += n;
    if (planned > header.to.size) throw new DeltaFormatError(`describes more than the target's ${header.to.size} bytes`);
  };
  const addDiff = async (raw: Buffer, at: number, n: number) => {
    for (let done = 0; done < n; ) {
      const k = Math.min(n - done, CHUNK);
      const p = add.skip(k);
      if (p >= 0) addBytes(raw, at + done, add.current, p, k);
      else addBytes(raw, at + done, await add.take(k, scratch, 0), 0, k);
      done += k;
    }
  };

  for (;;) {
    if (ops.buffered < OP_BYTES) await ops.need(OP_BYTES);
    const op = ops.byte();
    if (op === Op.End) break;
    switch (op) {
      case Op.Copy: {
        let off = ops.varint();
        let len = ops.varint();
        plan(len);
        if (off + len > header.from.size) throw new DeltaFormatError(`copy ${off}+${len} is outside the active payload`);
        if (ordered.pending) await ordered.drain();
        while (len > 0) {
          const n = Math.min(len, CHUNK);
          out.write(old.stored(off, scratch.subarray(0, n)));
          off += n;
          len -= n;
        }
        break;
      }
      case Op.Literal: {
        let len = ops.varint();
        plan(len);
        if (ordered.pending) await ordered.drain();
        while (len > 0) {
          const n = Math.min(len, CHUNK);
          out.write(await lit.take(n, scratch, 0));
          len -= n;
        }
        break;
      }
      case Op.Block: {
        const rawLen = ops.varint();
        const storedLen = ops.varint();
        const rawStored = ops.byte() === 1;
        const crc = ops.u32();
        if (rawLen > blockSize || storedLen > blockSize) throw new DeltaFormatError(`a block of ${rawLen} bytes, over the target's block size`);
        plan(storedLen);
        // gzip: a ring of IN_FLIGHT + 1, so a buffer comes round again only after its block was written.
        const raw = rawRing[ringAt++ % rawRing.length].subarray(0, rawLen);
        for (let at = 0; at < rawLen; ) {
          if (ops.buffered < OP_BYTES) await ops.need(OP_BYTES);
          const piece = ops.byte();
          if (piece === Op.RLit) {
            const n = ops.varint();
            if (at + n > rawLen) throw new DeltaFormatError('a piece overruns its block');
            const p = lit.skip(n);
            if (p >= 0) copyBytes(lit.current, p, raw, at, n);
            else await lit.take(n, raw, at);
            at += n;
          } else if (piece === Op.RCopy || piece === Op.RAdd) {
            const src = ops.varint();
            const z = ops.varint();
            if (src >= readEnd.length) throw new DeltaFormatError(`piece from source ${src}, the delta has ${readEnd.length}`);
            const off = readEnd[src] + (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
            const n = ops.varint();
            if (off < 0) throw new DeltaFormatError('a piece reads before its source');
            readEnd[src] = off + n;
            if (at + n > rawLen) throw new DeltaFormatError('a piece overruns its block');
            old.read(src, off, n, raw, at);
            if (piece === Op.RAdd) {
              // Synchronously when the bytes are buffered (most pieces): an await per piece would
              // cost a promise and a microtask turn each.
              const p = add.skip(n);
              if (p >= 0) addBytes(raw, at, add.current, p, n);
              else await addDiff(raw, at, n);
            }
            at += n;
          } else throw new DeltaFormatError(`unknown piece ${piece}`);
        }
        const where = planned - storedLen;
        const check = (b: Buffer): Buffer => {
          if (b.length !== storedLen || crc32(b) !== crc) throw new DeltaFormatError(`the block at byte ${where} of the target does not rebuild`);
          return b;
        };
        if (rawStored) {
          if (ordered.pending) await ordered.drain();
          out.write(check(raw));
        } else if (header.target.compression === 'gzip') await ordered.push(deflateAsync(raw).then(check));
        else {
          // Into one reused buffer (SlotWriter copies what it is given).
          if (ordered.pending) await ordered.drain();
          out.write(check(compressInto(raw, lz4Out!)));
        }
        break;
      }
      case Op.Verity: {
        if (ordered.pending) await ordered.drain();
        if (!out.verity || out.position !== out.verityEnd) throw new DeltaFormatError('hash tree requested at the wrong place');
        const { tree } = out.verity.finish();
        plan(tree.length);
        for (let at = 0; at < tree.length; at += CHUNK) out.write(tree.subarray(at, at + CHUNK));
        break;
      }
      default:
        throw new DeltaFormatError(`unknown operation ${op}`);
    }
  }
  await ordered.drain();
  for (const [r, name] of [[ops, 'ops'], [add, 'add'], [lit, 'literal']] as const)
    if (!(await r.atEnd())) throw new DeltaFormatError(`${name} stream has bytes left over`);
}
