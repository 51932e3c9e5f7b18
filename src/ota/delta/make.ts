/**
 * Publisher side: the delta from one squashfs root payload to the next (see format.ts).
 *
 * The plan, block by block of the target image:
 *  - a stored (compressed) block that already exists byte for byte in the old payload is copied
 *    from the device's active slot: unchanged files cost a few bytes each;
 *  - any other data or fragment block is rebuilt on the device from its uncompressed bytes, which
 *    come from the old file at the same path (bsdiff per file, so memory stays bounded by the
 *    largest file) or, for a new file, from the literal stream; the device compresses it and must
 *    get the target's stored bytes exactly. Before choosing that, we compress it here the same way:
 *    a block our encoder does not reproduce is sent as stored bytes instead;
 *  - metadata tables and the superblock are sent as they are; the dm-verity tree is recomputed.
 */
import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { brotliCompressSync, constants as zc } from 'node:zlib';
import { compressSync, encoderOf } from '../../fs/squashfs/codec.js';
import { writeAtomic } from '../../util/atomic.js';
import { crc32 } from '../../util/crc32.js';
import { EdgekitError } from '../../util/errors.js';
import { sha256OfFile } from '../../util/hash.js';
import { bsdiff, type DiffOp } from './bsdiff-tool.js';
import { ByteWriter, FORMAT, MAGIC, Op, type DeltaHeader, type DeltaSource } from './format.js';
import { DATA_RAW, readSquashfs, SquashContent, storedLength, type SquashFile, type StoredBlock } from './squashfs-reader.js';
import { VerityHasher } from './verity-stream.js';

export interface MakeDeltaOptions {
  /** The target payload's dm-verity salt (hex, from its manifest): lets the device recompute the tree. */
  veritySalt?: string;
  /** brotli quality for the streams (default 11). */
  quality?: number;
}

export interface DeltaInfo {
  /** Size of the delta file. */
  bytes: number;
  from: { size: number; sha256: string };
  to: { size: number; sha256: string };
  /** Target bytes copied from the active slot as stored. */
  copiedBytes: number;
  /** Target blocks rebuilt on the device, and their stored size. */
  rebuiltBlocks: number;
  rebuiltBytes: number;
  /** Target bytes sent as they are (metadata, and blocks our encoder does not reproduce). */
  literalBytes: number;
  changedFiles: number;
  newFiles: number;
  verityRecomputed: boolean;
  streams: { ops: number; add: number; literal: number };
}

/** A file's new bytes as pieces over its range: from an old file, old + differences, or literal. */
type Piece =
  | { kind: 'copy'; at: number; len: number; src: string; off: number }
  | { kind: 'add'; at: number; len: number; src: string; off: number; diff: Buffer }
  | { kind: 'lit'; at: number; len: number; data: Buffer };

/** Pieces covering [from, to) of a recipe. */
function slice(recipe: Piece[], from: number, to: number): Piece[] {
  const out: Piece[] = [];
  for (const p of recipe) {
    const a = Math.max(from, p.at), b = Math.min(to, p.at + p.len);
    if (a >= b) continue;
    const d = a - p.at, len = b - a;
    if (p.kind === 'lit') out.push({ kind: 'lit', at: a, len, data: p.data.subarray(d, d + len) });
    else if (p.kind === 'copy') out.push({ ...p, at: a, len, off: p.off + d });
    else out.push({ ...p, at: a, len, off: p.off + d, diff: p.diff.subarray(d, d + len) });
  }
  return out;
}

function recipeFromDiff(ops: DiffOp[], src: string): Piece[] {
  const out: Piece[] = [];
  for (const op of ops) {
    if (op.kind === 'literal') {
      out.push({ kind: 'lit', at: op.at, len: op.len, data: op.data });
      continue;
    }
    // Long runs of zero differences become plain copies, which need no add-stream bytes.
    const d = op.diff;
    const piece = (kind: 'copy' | 'add', s: number, e: number) =>
      out.push(kind === 'copy' ? { kind, at: op.at + s, len: e - s, src, off: op.oldAt + s } : { kind, at: op.at + s, len: e - s, src, off: op.oldAt + s, diff: d.subarray(s, e) });
    let s = 0;
    for (let k = 0; k < op.len; ) {
      if (d[k] !== 0) {
        k++;
        continue;
      }
      let e = k;
      while (e < op.len && d[e] === 0) e++;
      if (e - k >= 32 || (k === s && e === op.len)) {
        if (k > s) piece('add', s, k);
        piece('copy', k, e);
        s = e;
      }
      k = e;
    }
    if (s < op.len) piece('add', s, op.len);
  }
  return out;
}

function checkRecipe(recipe: Piece[], oldData: Buffer, newData: Buffer, path: string): void {
  let at = 0;
  for (const p of recipe) {
    if (p.at !== at) throw new Error(`delta: recipe of /${path} has a gap at ${at}`);
    for (let i = 0; i < p.len; i++) {
      const v = p.kind === 'lit' ? p.data[i] : p.kind === 'copy' ? oldData[p.off + i] : (oldData[p.off + i] + p.diff[i]) & 0xff;
      if (v !== newData[p.at + i]) throw new Error(`delta: recipe of /${path} is wrong at byte ${p.at + i}`);
    }
    at += p.len;
  }
  if (at !== newData.length) throw new Error(`delta: recipe of /${path} covers ${at} of ${newData.length} bytes`);
}

/** Signed to unsigned, small magnitudes staying small (as protobuf does). */
function zigzag(v: number): number {
  return v >= 0 ? v * 2 : -v * 2 - 1;
}

function blockHash(b: Buffer): string {
  return createHash('sha1').update(b).digest('base64');
}

interface TargetBlock {
  offset: number;
  sizeWord: number;
  /** A file's full block k, or a fragment block. */
  file?: SquashFile;
  index: number;
  fragment?: boolean;
}

export async function makeDelta(fromPayload: string, toPayload: string, out: string, opts: MakeDeltaOptions = {}): Promise<DeltaInfo> {
  const [oldImg, newImg] = await Promise.all([readSquashfs(fromPayload), readSquashfs(toPayload)]);
  const oldC = await SquashContent.open(oldImg);
  const newC = await SquashContent.open(newImg);
  const toSize = (await stat(toPayload)).size;
  const from = { size: (await stat(fromPayload)).size, sha256: await sha256OfFile(fromPayload) };
  const to = { size: toSize, sha256: await sha256OfFile(toPayload) };
  const info: DeltaInfo = {
    bytes: 0, from, to, copiedBytes: 0, rebuiltBlocks: 0, rebuiltBytes: 0, literalBytes: 0,
    changedFiles: 0, newFiles: 0, verityRecomputed: false, streams: { ops: 0, add: 0, literal: 0 },
  };
  try {
    // Every stored block of the old payload, by content: those are copied instead of sent.
    const oldBlocks = new Map<string, number>();
    const indexBlock = async (b: StoredBlock) => {
      if (b.sizeWord === 0) return;
      const key = blockHash(Buffer.concat([await oldC.stored(b), Buffer.from(String(b.sizeWord))]));
      if (!oldBlocks.has(key)) oldBlocks.set(key, b.offset);
    };
    for (const f of oldImg.files) for (const b of f.blocks) await indexBlock(b);
    for (const b of oldImg.fragments) await indexBlock(b);
    const copySource = async (b: StoredBlock): Promise<number | undefined> =>
      oldBlocks.get(blockHash(Buffer.concat([await newC.stored(b), Buffer.from(String(b.sizeWord))])));

    const targets: TargetBlock[] = [];
    for (const f of newImg.files) f.blocks.forEach((b, index) => b.sizeWord !== 0 && targets.push({ ...b, file: f, index }));
    newImg.fragments.forEach((b, index) => targets.push({ ...b, index, fragment: true }));
    targets.sort((a, b) => a.offset - b.offset);

    // Which target blocks are not in the old payload, and so which files need a recipe.
    const copyFrom = new Map<TargetBlock, number>();
    const needRecipe = new Set<SquashFile>();
    const tailsIn = new Map<number, SquashFile[]>();
    for (const f of newImg.files) if (f.tail) tailsIn.set(f.tail.fragment, [...(tailsIn.get(f.tail.fragment) ?? []), f]);
    for (const t of targets) {
      const src = await copySource(t);
      if (src !== undefined) copyFrom.set(t, src);
      else if (t.fragment) for (const f of tailsIn.get(t.index) ?? []) needRecipe.add(f);
      else needRecipe.add(t.file!);
    }

    const oldByPath = new Map(oldImg.files.map((f) => [f.path, f]));
    const oldBySize = new Map<number, SquashFile[]>();
    for (const f of oldImg.files) oldBySize.set(f.size, [...(oldBySize.get(f.size) ?? []), f]);
    const recipes = new Map<SquashFile, Piece[]>();
    for (const f of needRecipe) {
      const data = await newC.file(f);
      let ref = oldByPath.get(f.path);
      let refData = ref ? await oldC.file(ref) : undefined;
      if (!refData || !refData.equals(data)) {
        for (const cand of oldBySize.get(f.size) ?? []) {
          const cd = await oldC.file(cand);
          if (cd.equals(data)) {
            ref = cand;
            refData = cd;
            break;
          }
        }
      }
      let recipe: Piece[];
      if (ref && refData!.equals(data)) recipe = data.length ? [{ kind: 'copy', at: 0, len: data.length, src: ref.path, off: 0 }] : [];
      else if (ref && data.length >= 64 && refData!.length >= 64) {
        info.changedFiles++;
        recipe = recipeFromDiff(await bsdiff(refData!, data), ref.path);
        checkRecipe(recipe, refData!, data, f.path);
      } else {
        info.newFiles++;
        recipe = data.length ? [{ kind: 'lit', at: 0, len: data.length, data }] : [];
      }
      recipes.set(f, recipe);
    }

    // The program.
    const ops = new ByteWriter();
    const add = new ByteWriter();
    const lit = new ByteWriter();
    const sources = new Map<string, number>();
    const sourceList: DeltaSource[] = [];
    const sourceOf = (path: string): number => {
      let i = sources.get(path);
      if (i === undefined) {
        const f = oldByPath.get(path)!;
        const s: DeltaSource = { size: f.size, blocks: f.blocks.map((b) => [b.offset, b.sizeWord]) };
        if (f.tail) {
          const frag = oldImg.fragments[f.tail.fragment];
          s.tail = [frag.offset, frag.sizeWord, f.tail.offset];
        }
        i = sourceList.push(s) - 1;
        sources.set(path, i);
      }
      return i;
    };
    // Pieces name where they read relative to where the last read of that source ended.
    const readEnd = new Map<number, number>();
    const newFh = await open(toPayload, 'r');
    let cursor = 0;
    let pendingCopy: { off: number; len: number } | undefined;
    const flushCopy = () => {
      if (!pendingCopy) return;
      ops.byte(Op.Copy);
      ops.varint(pendingCopy.off);
      ops.varint(pendingCopy.len);
      pendingCopy = undefined;
    };
    const copy = (off: number, len: number) => {
      info.copiedBytes += len;
      if (pendingCopy && pendingCopy.off + pendingCopy.len === off) pendingCopy.len += len;
      else {
        flushCopy();
        pendingCopy = { off, len };
      }
      cursor += len;
    };
    const literal = async (end: number) => {
      if (end <= cursor) return;
      flushCopy();
      const buf = Buffer.alloc(end - cursor);
      await newFh.read(buf, 0, buf.length, cursor);
      ops.byte(Op.Literal);
      ops.varint(buf.length);
      lit.bytes(buf);
      info.literalBytes += buf.length;
      cursor = end;
    };
    try {
      for (const t of targets) {
        await literal(t.offset);
        const len = storedLength(t.sizeWord);
        const src = copyFrom.get(t);
        if (src !== undefined) {
          copy(src, len);
          continue;
        }
        // The block's uncompressed bytes, and the pieces that make them.
        let raw: Buffer;
        let pieces: Piece[];
        if (t.fragment) {
          raw = await newC.rawBlock(t, newImg.blockSize);
          const tails = (tailsIn.get(t.index) ?? []).sort((a, b) => a.tail!.offset - b.tail!.offset);
          pieces = [];
          let at = 0;
          for (const f of tails) {
            const start = f.blocks.length * newImg.blockSize;
            if (f.tail!.offset !== at) break;
            pieces.push(...slice(recipes.get(f)!, start, f.size));
            at += f.size - start;
          }
          if (at !== raw.length) pieces = [{ kind: 'lit', at: 0, len: raw.length, data: raw }];
        } else {
          const f = t.file!;
          const start = t.index * newImg.blockSize;
          const end = Math.min(f.size, start + newImg.blockSize);
          raw = await newC.rawBlock(t, end - start);
          pieces = slice(recipes.get(f)!, start, end);
        }
        const stored = await newC.stored(t);
        const rawStored = (t.sizeWord & DATA_RAW) !== 0;
        if (!(rawStored ? raw.equals(stored) : compressSync(newImg.codec, raw)?.equals(stored))) {
          await literal(t.offset + len);
          continue;
        }
        flushCopy();
        ops.byte(Op.Block);
        ops.varint(raw.length);
        ops.varint(stored.length);
        ops.byte(rawStored ? 1 : 0);
        ops.u32(crc32(stored));
        for (const p of pieces) {
          if (p.kind === 'lit') {
            ops.byte(Op.RLit);
            ops.varint(p.len);
            lit.bytes(p.data);
          } else {
            ops.byte(p.kind === 'copy' ? Op.RCopy : Op.RAdd);
            const src = sourceOf(p.src);
            ops.varint(src);
            ops.varint(zigzag(p.off - (readEnd.get(src) ?? 0)));
            ops.varint(p.len);
            readEnd.set(src, p.off + p.len);
            if (p.kind === 'add') add.bytes(p.diff);
          }
        }
        info.rebuiltBlocks++;
        info.rebuiltBytes += len;
        cursor += len;
      }
      const squashEnd = Math.ceil(newImg.bytesUsed / 4096) * 4096;
      await literal(Math.min(squashEnd, toSize));

      let verity: DeltaHeader['verity'];
      if (opts.veritySalt && squashEnd < toSize) {
        const hasher = new VerityHasher(Buffer.from(opts.veritySalt, 'hex'));
        const buf = Buffer.alloc(1 << 20);
        for (let pos = 0; pos < squashEnd; pos += buf.length) {
          const n = Math.min(buf.length, squashEnd - pos);
          await newFh.read(buf, 0, n, pos);
          hasher.update(buf.subarray(0, n));
        }
        const { tree } = hasher.finish();
        const stored = Buffer.alloc(toSize - squashEnd);
        await newFh.read(stored, 0, stored.length, squashEnd);
        if (tree.equals(stored)) {
          flushCopy();
          ops.byte(Op.Verity);
          cursor = toSize;
          verity = { salt: opts.veritySalt, dataSize: squashEnd };
          info.verityRecomputed = true;
        }
      }
      await literal(toSize);
      flushCopy();
      ops.byte(Op.End);

      const q = opts.quality ?? 11;
      const pack = (b: Buffer) =>
        brotliCompressSync(b, {
          params: { [zc.BROTLI_PARAM_QUALITY]: q, [zc.BROTLI_PARAM_LGWIN]: 22, [zc.BROTLI_PARAM_SIZE_HINT]: b.length },
        });
      const streams = [pack(ops.finish()), pack(add.finish()), pack(lit.finish())];
      info.streams = { ops: streams[0].length, add: streams[1].length, literal: streams[2].length };
      const header: DeltaHeader = {
        format: FORMAT, from, to,
        target: { compression: newImg.compression, encoder: encoderOf(newImg.compression), blockSize: newImg.blockSize },
        source: { blockSize: oldImg.blockSize, codec: oldImg.codec },
        sources: sourceList,
        ...(verity ? { verity } : {}),
        streams: info.streams,
      };
      const headerBytes = pack(Buffer.from(JSON.stringify(header)));
      const lenBuf = Buffer.alloc(4);
      lenBuf.writeUInt32LE(headerBytes.length);
      const all = [Buffer.from(MAGIC), lenBuf, headerBytes, ...streams];
      await writeAtomic(out, async (tmp) => {
        const fh = await open(tmp, 'w', 0o644);
        try {
          await fh.writev(all);
        } finally {
          await fh.close();
        }
      });
      info.bytes = all.reduce((n, b) => n + b.length, 0);
    } finally {
      await newFh.close();
    }
    if (info.copiedBytes + info.rebuiltBytes + info.literalBytes > toSize) throw new EdgekitError('delta: planned more bytes than the target holds');
    return info;
  } finally {
    await oldC.close();
    await newC.close();
  }
}
