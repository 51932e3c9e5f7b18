/**
 * Publisher-side squashfs 4.0 reader: just enough of the format to plan a delta. It lists every
 * regular file with where its data blocks and tail fragment sit in the image, and reads a file's
 * bytes back. Metadata (inode and directory tables) is small and read whole; file data is read per
 * block. gzip, lz4 and uncompressed images, which is what edgekit's writer makes.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { compressionOf, decompressBlock, type Compression } from '../../fs/squashfs/codec.js';
import { EdgekitError } from '../../util/errors.js';

const MAGIC = 0x73717368;
const META = 8192;
const META_RAW = 0x8000;
export const DATA_RAW = 1 << 24;
const NO_FRAGMENT = 0xffffffff;

export interface StoredBlock {
  /** Absolute offset in the image. */
  offset: number;
  /** The squashfs size word: stored length, DATA_RAW bit when not compressed; 0 = all-zero block. */
  sizeWord: number;
}

export interface SquashFile {
  path: string;
  size: number;
  /** Full blocks, in file order. */
  blocks: StoredBlock[];
  /** The tail, when packed into a fragment block. */
  tail?: { fragment: number; offset: number };
}

export interface SquashImage {
  path: string;
  blockSize: number;
  /** How its data blocks are compressed ('none': every block stored raw). */
  compression: Compression;
  /** The codec of blocks marked compressed (metadata too): gzip or lz4. */
  codec: Compression;
  /** End of the filesystem (superblock's bytes_used). */
  bytesUsed: number;
  inodeTableStart: number;
  files: SquashFile[];
  fragments: StoredBlock[];
}

export function storedLength(sizeWord: number): number {
  return sizeWord & ~DATA_RAW;
}

async function readAt(fh: FileHandle, pos: number, len: number): Promise<Buffer> {
  const buf = Buffer.alloc(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, pos + got);
    if (bytesRead === 0) throw new EdgekitError(`squashfs: image ends at byte ${pos + got}, inside a structure`);
    got += bytesRead;
  }
  return buf;
}

/** A whole metadata table, uncompressed, and where each stored block's bytes begin in it. */
function readMetadata(bytes: Buffer, codec: Compression): { data: Buffer; at: Map<number, number> } {
  const parts: Buffer[] = [];
  const at = new Map<number, number>();
  let pos = 0;
  let out = 0;
  while (pos + 2 <= bytes.length) {
    const head = bytes.readUInt16LE(pos);
    const len = head & ~META_RAW;
    const body = bytes.subarray(pos + 2, pos + 2 + len);
    const raw = head & META_RAW ? body : decompressBlock(codec, body, META);
    at.set(pos, out);
    parts.push(raw);
    out += raw.length;
    pos += 2 + len;
    if (raw.length < META) break;
  }
  return { data: Buffer.concat(parts), at };
}

export async function readSquashfs(path: string): Promise<SquashImage> {
  const fh = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`squashfs: cannot open ${path}: ${err.code ?? err.message}`);
  });
  try {
    const sb = await readAt(fh, 0, 96);
    if (sb.readUInt32LE(0) !== MAGIC) throw new EdgekitError(`${path}: not a squashfs image`);
    const blockSize = sb.readUInt32LE(12);
    const fragmentCount = sb.readUInt32LE(16);
    const flags = sb.readUInt16LE(24);
    const compression = compressionOf(sb.readUInt16LE(20), flags, path);
    // squashfs 4.0 marks each block compressed or not; the superblock's flags only describe the whole.
    const codec: Compression = sb.readUInt16LE(20) === 5 ? 'lz4' : 'gzip';
    const rootRef = sb.readBigUInt64LE(32);
    const bytesUsed = Number(sb.readBigUInt64LE(40));
    const inodeTableStart = Number(sb.readBigUInt64LE(64));
    const directoryTableStart = Number(sb.readBigUInt64LE(72));
    const fragmentTableStart = Number(sb.readBigUInt64LE(80));
    const idTableStart = Number(sb.readBigUInt64LE(48));

    const inodes = readMetadata(await readAt(fh, inodeTableStart, directoryTableStart - inodeTableStart), codec);
    const dirEnd = fragmentCount > 0 ? fragmentTableStart : idTableStart;
    const dirs = readMetadata(await readAt(fh, directoryTableStart, Math.max(0, dirEnd - directoryTableStart)), codec);

    const fragments: StoredBlock[] = [];
    if (fragmentCount > 0) {
      const indexCount = Math.ceil((fragmentCount * 16) / META);
      const index = await readAt(fh, fragmentTableStart, indexCount * 8);
      const parts: Buffer[] = [];
      for (let i = 0; i < indexCount; i++) {
        const start = Number(index.readBigUInt64LE(i * 8));
        const head = (await readAt(fh, start, 2)).readUInt16LE(0);
        const body = await readAt(fh, start + 2, head & ~META_RAW);
        parts.push(head & META_RAW ? body : decompressBlock(codec, body, META));
      }
      const table = Buffer.concat(parts);
      for (let i = 0; i < fragmentCount; i++) fragments.push({ offset: Number(table.readBigUInt64LE(i * 16)), sizeWord: table.readUInt32LE(i * 16 + 8) });
    }

    const inodeAt = (block: number, offset: number): number => {
      const base = inodes.at.get(block);
      if (base === undefined) throw new EdgekitError(`${path}: inode reference to block ${block} is not in the inode table`);
      return base + offset;
    };
    const files: SquashFile[] = [];
    const walk = (pos: number, dirPath: string): void => {
      const d = inodes.data;
      const type = d.readUInt16LE(pos);
      let listBlock: number, listOffset: number, listSize: number;
      if (type === 1) {
        listBlock = d.readUInt32LE(pos + 16);
        listSize = d.readUInt16LE(pos + 24) - 3;
        listOffset = d.readUInt16LE(pos + 26);
      } else if (type === 8) {
        listSize = d.readUInt32LE(pos + 20) - 3;
        listBlock = d.readUInt32LE(pos + 24);
        listOffset = d.readUInt16LE(pos + 34);
      } else throw new EdgekitError(`${path}: /${dirPath} is not a directory inode (type ${type})`);
      const base = dirs.at.get(listBlock);
      if (base === undefined) throw new EdgekitError(`${path}: listing of /${dirPath} is outside the directory table`);
      let p = base + listOffset;
      const end = p + listSize;
      while (p < end) {
        const count = dirs.data.readUInt32LE(p) + 1;
        const inodeBlock = dirs.data.readUInt32LE(p + 4);
        p += 12;
        for (let i = 0; i < count; i++) {
          const off = dirs.data.readUInt16LE(p);
          const nameLen = dirs.data.readUInt16LE(p + 6) + 1;
          const name = dirs.data.subarray(p + 8, p + 8 + nameLen).toString('latin1');
          p += 8 + nameLen;
          const childPath = dirPath === '' ? name : `${dirPath}/${name}`;
          const ipos = inodeAt(inodeBlock, off);
          const itype = d.readUInt16LE(ipos);
          if (itype === 1 || itype === 8) walk(ipos, childPath);
          else if (itype === 2 || itype === 9) files.push(fileOf(d, ipos, itype, childPath, blockSize));
        }
      }
    };
    walk(inodeAt(Number(rootRef >> 16n), Number(rootRef & 0xffffn)), '');
    return { path, blockSize, compression, codec, bytesUsed, inodeTableStart, files, fragments };
  } finally {
    await fh.close();
  }
}

function fileOf(d: Buffer, pos: number, type: number, path: string, blockSize: number): SquashFile {
  let start: number, fragment: number, fragOffset: number, size: number, p: number;
  if (type === 2) {
    start = d.readUInt32LE(pos + 16);
    fragment = d.readUInt32LE(pos + 20);
    fragOffset = d.readUInt32LE(pos + 24);
    size = d.readUInt32LE(pos + 28);
    p = pos + 32;
  } else {
    start = Number(d.readBigUInt64LE(pos + 16));
    size = Number(d.readBigUInt64LE(pos + 24));
    fragment = d.readUInt32LE(pos + 44);
    fragOffset = d.readUInt32LE(pos + 48);
    p = pos + 56;
  }
  const count = fragment === NO_FRAGMENT ? Math.ceil(size / blockSize) : Math.floor(size / blockSize);
  const blocks: StoredBlock[] = [];
  let at = start;
  for (let i = 0; i < count; i++) {
    const sizeWord = d.readUInt32LE(p + 4 * i);
    blocks.push({ offset: at, sizeWord });
    at += storedLength(sizeWord);
  }
  const file: SquashFile = { path, size, blocks };
  if (fragment !== NO_FRAGMENT) file.tail = { fragment, offset: fragOffset };
  return file;
}

/** Reads stored blocks back as file bytes; keeps the last fragment block it inflated. */
export class SquashContent {
  private lastFragment?: { index: number; data: Buffer };
  private constructor(
    private readonly fh: FileHandle,
    readonly image: SquashImage,
  ) {}

  static async open(image: SquashImage): Promise<SquashContent> {
    return new SquashContent(await open(image.path, 'r'), image);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  async stored(b: StoredBlock): Promise<Buffer> {
    return readAt(this.fh, b.offset, storedLength(b.sizeWord));
  }

  async rawBlock(b: StoredBlock, rawLength: number): Promise<Buffer> {
    if (b.sizeWord === 0) return Buffer.alloc(rawLength);
    const stored = await this.stored(b);
    return b.sizeWord & DATA_RAW ? stored : decompressBlock(this.image.codec, stored, rawLength);
  }

  async fragment(index: number): Promise<Buffer> {
    if (this.lastFragment?.index !== index) {
      const f = this.image.fragments[index];
      if (!f) throw new EdgekitError(`${this.image.path}: fragment ${index} does not exist`);
      this.lastFragment = { index, data: await this.rawBlock(f, this.image.blockSize) };
    }
    return this.lastFragment.data;
  }

  /** A whole file's bytes (publisher side: files are at most tens of MB). */
  async file(f: SquashFile): Promise<Buffer> {
    const bs = this.image.blockSize;
    const parts: Buffer[] = [];
    for (let i = 0; i < f.blocks.length; i++) parts.push(await this.rawBlock(f.blocks[i], Math.min(bs, f.size - i * bs)));
    if (f.tail) {
      const tailLen = f.size - f.blocks.length * bs;
      parts.push((await this.fragment(f.tail.fragment)).subarray(f.tail.offset, f.tail.offset + tailLen));
    }
    return Buffer.concat(parts);
  }
}
