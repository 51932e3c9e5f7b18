/**
 * Writes a FAT16 or FAT32 filesystem image from a Tree, without mounting anything.
 *
 * Layout, chosen so the output is deterministic and each file's bytes are one known range:
 * directories first (the FAT32 root at cluster 2, then every other directory in tree order),
 * then every non-empty file in tree order, each in contiguous clusters. Names get VFAT long-name
 * entries unless they already are upper-case 8.3 names, so their case survives.
 *
 * The image file is created at its full size and only non-zero data is written: free space, the
 * unused part of the FATs and all-zero blocks of files stay holes, which the image's block map
 * relies on to skip them.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';
import { writeAtomic } from '../util/atomic.js';
import { Tree, baseName, parentOf, contentSize, type TreeEntry, type FileEntry, type DirEntry } from '../tree/tree.js';
import { fatGeometry, FAT_COUNT, FAT_SECTOR, type FatGeometry, type FatType } from './fat-geometry.js';
import { ShortNameAllocator, checkLongName, longNameEntries } from './fat-names.js';
import { ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID, DIRENT_SIZE, dosTimestamp, shortEntry, type DosTimestamp } from './fat-dirent.js';

export type { FatType } from './fat-geometry.js';

export interface FatOptions {
  /** Exact size of the image in bytes (a multiple of 512). */
  size: number;
  /** Volume label, up to 11 characters; '' for none. Case is kept as given. */
  label: string;
  /** Volume serial number (32 bits). */
  volumeId: number;
  /** Seconds since the epoch, stamped on every entry (as UTC). */
  mtime: number;
  /** Without it, picked from the size (see fatGeometry). */
  fatType?: FatType;
  /** Byte offset of the partition on its disk, recorded in the boot sector ("hidden sectors"). */
  partitionOffset?: number;
}

export interface FatFileExtent {
  path: string;
  /** Byte offset of the file's data from the start of the filesystem. */
  offset: number;
  length: number;
}

export interface FatLayout {
  fatType: FatType;
  clusterSize: number;
  clusterCount: number;
  usedClusters: number;
  /** Every regular file, in tree order; an empty file has offset 0 and length 0. */
  files: FatFileExtent[];
}

/** Largest FAT file: the size field is 32 bits. */
const MAX_FILE_SIZE = 0xffffffff;
/** A directory may hold at most 65536 entries (the spec's limit). */
const MAX_DIR_ENTRIES = 65536;
const FAT32_FSINFO_SECTOR = 1;
const FAT32_BACKUP_BOOT_SECTOR = 6;
const MEDIA_FIXED_DISK = 0xf8;
/** Chunk size for streaming file contents, and the block size below which zeros are written. */
const COPY_CHUNK = 1 << 20;
const HOLE_BLOCK = 4096;
const LABEL_CHARS = /^[A-Za-z0-9!#$%&'()\-@^_`{}~ ]*$/;

interface Child {
  entry: DirEntry | FileEntry;
  name: string;
  short: Buffer;
  needsLfn: boolean;
}

interface DirNode {
  path: string;
  parent?: DirNode;
  children: Child[];
  entryCount: number;
  firstCluster: number;
  clusters: number;
}

interface FileNode {
  entry: FileEntry;
  size: number;
  firstCluster: number;
  clusters: number;
}

function checkOptions(opts: FatOptions, what: string): void {
  if (opts.label.length > 11 || !LABEL_CHARS.test(opts.label)) {
    throw new EdgekitError(`${what}: label "${opts.label}" must be at most 11 letters, digits, spaces or ${"!#$%&'()-@^_`{}~"}`);
  }
  if (!Number.isInteger(opts.volumeId) || opts.volumeId < 0 || opts.volumeId > 0xffffffff) {
    throw new EdgekitError(`${what}: volume id ${opts.volumeId} is not a 32-bit unsigned number`);
  }
  if (!Number.isFinite(opts.mtime)) throw new EdgekitError(`${what}: mtime ${opts.mtime} is not a number`);
  const offset = opts.partitionOffset ?? 0;
  if (!Number.isInteger(offset) || offset < 0 || offset % FAT_SECTOR !== 0 || offset / FAT_SECTOR > 0xffffffff) {
    throw new EdgekitError(`${what}: partition offset ${offset} is not a sector-aligned offset below 2 TiB`);
  }
}

/** Directories and files of the tree, with short names decided; anything else is an error. */
function planTree(tree: Tree, hasLabel: boolean): { dirs: DirNode[]; files: FileNode[] } {
  const byDir = tree.childrenByDir();
  const dirs: DirNode[] = [];
  const dirByPath = new Map<string, DirNode>();
  const files: FileNode[] = [];
  for (const e of tree.list()) {
    if (e.type === 'file') {
      const size = contentSize(e.content);
      if (size > MAX_FILE_SIZE) throw new EdgekitError(`FAT: "${e.path}" is ${size} bytes; FAT files hold at most ${MAX_FILE_SIZE}`);
      files.push({ entry: e, size, firstCluster: 0, clusters: 0 });
      continue;
    }
    if (e.type !== 'dir') {
      throw new EdgekitError(`FAT: "${e.path}" is a ${e.type}; a FAT filesystem holds only directories and regular files`);
    }
    const kids = (byDir.get(e.path) ?? []).filter((c) => c.type === 'dir' || c.type === 'file'); // others are reported when the loop reaches them
    const byFolded = new Map<string, string>();
    for (const child of kids) {
      const name = baseName(child.path);
      checkLongName(name, child.path);
      // FAT looks names up ignoring case: twins would make one of them unreachable.
      const twin = byFolded.get(name.toUpperCase());
      if (twin !== undefined) throw new EdgekitError(`FAT: "${twin}" and "${child.path}" differ only in case, which FAT cannot tell apart`);
      byFolded.set(name.toUpperCase(), child.path);
    }
    const names = new ShortNameAllocator(kids.map((c) => baseName(c.path)));
    const children: Child[] = [];
    let entryCount = e.path === '' ? (hasLabel ? 1 : 0) : 2; // the label, or '.' and '..'
    for (const child of kids as Array<DirEntry | FileEntry>) {
      const name = baseName(child.path);
      const { short, needsLfn } = names.allocate(name);
      children.push({ entry: child, name, short, needsLfn });
      entryCount += 1 + (needsLfn ? Math.ceil(name.length / 13) : 0);
    }
    if (entryCount > MAX_DIR_ENTRIES) {
      throw new EdgekitError(`FAT: directory "${e.path || '/'}" needs ${entryCount} entries; FAT allows ${MAX_DIR_ENTRIES}`);
    }
    const node: DirNode = { path: e.path, parent: dirByPath.get(parentOf(e.path)), children, entryCount, firstCluster: 0, clusters: 0 };
    if (e.path === '') node.parent = undefined;
    dirs.push(node);
    dirByPath.set(e.path, node);
  }
  return { dirs, files };
}

/** Assigns contiguous cluster runs; returns the next free cluster. */
function allocate(g: FatGeometry, dirs: DirNode[], files: FileNode[]): number {
  const clusterBytes = g.sectorsPerCluster * FAT_SECTOR;
  let next = 2;
  for (const d of dirs) {
    if (d.path === '' && g.fatType === 'fat16') continue; // FAT16's root has its own fixed region
    d.firstCluster = next;
    d.clusters = Math.max(1, Math.ceil((d.entryCount * DIRENT_SIZE) / clusterBytes));
    next += d.clusters;
  }
  for (const f of files) {
    if (f.size === 0) continue;
    f.firstCluster = next;
    f.clusters = Math.ceil(f.size / clusterBytes);
    next += f.clusters;
  }
  return next;
}

/** Bytes a volume with `usedClusters` would take with this geometry's type and cluster size. */
function bytesNeeded(g: FatGeometry, usedClusters: number): number {
  const entryBytes = g.fatType === 'fat16' ? 2 : 4;
  const fatSectors = Math.ceil(((usedClusters + 2) * entryBytes) / FAT_SECTOR);
  return (g.reservedSectors + FAT_COUNT * fatSectors + g.rootDirSectors + usedClusters * g.sectorsPerCluster) * FAT_SECTOR;
}

function bootSector(g: FatGeometry, opts: FatOptions): Buffer {
  const bs = Buffer.alloc(FAT_SECTOR);
  const fat32 = g.fatType === 'fat32';
  bs.set([0xeb, fat32 ? 0x58 : 0x3c, 0x90], 0); // jmp to the boot code, nop
  bs.write('MSWIN4.1', 3, 'latin1'); // the OEM name the spec recommends for compatibility
  bs.writeUInt16LE(FAT_SECTOR, 11);
  bs[13] = g.sectorsPerCluster;
  bs.writeUInt16LE(g.reservedSectors, 14);
  bs[16] = FAT_COUNT;
  bs.writeUInt16LE(g.rootEntries, 17);
  bs.writeUInt16LE(!fat32 && g.totalSectors < 0x10000 ? g.totalSectors : 0, 19);
  bs[21] = MEDIA_FIXED_DISK;
  bs.writeUInt16LE(fat32 ? 0 : g.fatSectors, 22);
  bs.writeUInt16LE(63, 24); // sectors per track and heads: the usual LBA-translated geometry
  bs.writeUInt16LE(255, 26);
  bs.writeUInt32LE((opts.partitionOffset ?? 0) / FAT_SECTOR, 28);
  bs.writeUInt32LE(!fat32 && g.totalSectors < 0x10000 ? 0 : g.totalSectors, 32);
  let ext = 36; // where the extended BPB starts: after the FAT32-only fields on FAT32
  if (fat32) {
    bs.writeUInt32LE(g.fatSectors, 36);
    bs.writeUInt16LE(0, 40); // FAT mirroring on, no active FAT
    bs.writeUInt16LE(0, 42); // version 0.0
    bs.writeUInt32LE(2, 44); // root directory cluster
    bs.writeUInt16LE(FAT32_FSINFO_SECTOR, 48);
    bs.writeUInt16LE(FAT32_BACKUP_BOOT_SECTOR, 50);
    ext = 64;
  }
  bs[ext] = 0x80; // drive number: a hard disk
  bs[ext + 2] = 0x29; // extended boot signature: the three fields below are present
  bs.writeUInt32LE(opts.volumeId, ext + 3);
  bs.write((opts.label || 'NO NAME').padEnd(11, ' '), ext + 7, 'latin1');
  bs.write(fat32 ? 'FAT32   ' : 'FAT16   ', ext + 18, 'latin1');
  // Boot code: "int 18h" (let the BIOS try the next boot device), then halt.
  bs.set([0xcd, 0x18, 0xf4, 0xeb, 0xfd], ext + 26);
  bs[510] = 0x55;
  bs[511] = 0xaa;
  return bs;
}

function fsInfoSector(freeClusters: number, nextFree: number): Buffer {
  const s = Buffer.alloc(FAT_SECTOR);
  s.writeUInt32LE(0x41615252, 0);
  s.writeUInt32LE(0x61417272, 484);
  s.writeUInt32LE(freeClusters, 488);
  s.writeUInt32LE(nextFree, 492);
  s.writeUInt32LE(0xaa550000, 508);
  return s;
}

/** The used part of one FAT copy: the two reserved entries and every chain, rounded to sectors. */
function fatTable(g: FatGeometry, nextCluster: number, chains: Array<{ first: number; count: number }>): Buffer {
  const fat32 = g.fatType === 'fat32';
  const entryBytes = fat32 ? 4 : 2;
  const buf = Buffer.alloc(Math.ceil((nextCluster * entryBytes) / FAT_SECTOR) * FAT_SECTOR);
  const set = (cluster: number, value: number) =>
    fat32 ? buf.writeUInt32LE(value >>> 0, cluster * 4) : buf.writeUInt16LE(value & 0xffff, cluster * 2);
  const eoc = fat32 ? 0x0fffffff : 0xffff;
  set(0, fat32 ? 0x0fffff00 | MEDIA_FIXED_DISK : 0xff00 | MEDIA_FIXED_DISK);
  set(1, eoc); // clean-shutdown and no-error bits set
  for (const { first, count } of chains) {
    for (let c = first; c < first + count - 1; c++) set(c, c + 1);
    set(first + count - 1, eoc);
  }
  return buf;
}

function directoryBytes(d: DirNode, g: FatGeometry, opts: FatOptions, stamp: DosTimestamp, clusterOf: (e: TreeEntry) => number): Buffer {
  const parts: Buffer[] = [];
  if (d.path === '') {
    if (opts.label) {
      parts.push(shortEntry({ name: Buffer.from(opts.label.padEnd(11, ' '), 'latin1'), attr: ATTR_VOLUME_ID, cluster: 0, size: 0, stamp }));
    }
  } else {
    // '..' of a first-level directory points at cluster 0, even on FAT32 where the root has one.
    const parentCluster = d.parent && d.parent.path !== '' ? d.parent.firstCluster : 0;
    parts.push(shortEntry({ name: Buffer.from('.          ', 'latin1'), attr: ATTR_DIRECTORY, cluster: d.firstCluster, size: 0, stamp }));
    parts.push(shortEntry({ name: Buffer.from('..         ', 'latin1'), attr: ATTR_DIRECTORY, cluster: parentCluster, size: 0, stamp }));
  }
  for (const c of d.children) {
    if (c.needsLfn) parts.push(...longNameEntries(c.name, c.short));
    const isDir = c.entry.type === 'dir';
    parts.push(
      shortEntry({
        name: c.short,
        attr: isDir ? ATTR_DIRECTORY : ATTR_ARCHIVE,
        cluster: clusterOf(c.entry),
        size: isDir ? 0 : contentSize((c.entry as FileEntry).content),
        stamp,
      }),
    );
  }
  return Buffer.concat(parts);
}

const ZERO_BLOCK = Buffer.alloc(HOLE_BLOCK);

/** Writes `data` at `position`, skipping 4 KiB blocks (aligned in the output) that are all zero. */
async function writeSkippingZeros(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let runStart = -1;
  let i = 0;
  while (i < data.length) {
    const blockEnd = Math.min(data.length, i + HOLE_BLOCK - ((position + i) % HOLE_BLOCK));
    const zero = ZERO_BLOCK.compare(data, i, blockEnd, 0, blockEnd - i) === 0;
    if (!zero && runStart < 0) runStart = i;
    if (zero && runStart >= 0) {
      await writeAll(fh, data.subarray(runStart, i), position + runStart);
      runStart = -1;
    }
    i = blockEnd;
  }
  if (runStart >= 0) await writeAll(fh, data.subarray(runStart), position + runStart);
}

async function writeAll(fh: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

/** Copies a file's content to `position`, streaming files on disk in chunks. */
async function writeContent(fh: FileHandle, f: FileNode, position: number): Promise<void> {
  const content = f.entry.content;
  if (content.kind === 'buffer') {
    await writeSkippingZeros(fh, content.data, position);
    return;
  }
  const src = await open(content.path, 'r');
  try {
    const chunk = Buffer.alloc(Math.min(COPY_CHUNK, Math.max(f.size, 1)));
    let done = 0;
    while (done < f.size) {
      const want = Math.min(chunk.length, f.size - done);
      const { bytesRead } = await src.read(chunk, 0, want, done);
      if (bytesRead === 0) {
        throw new EdgekitError(`FAT: "${f.entry.path}": ${content.path} is shorter than the ${f.size} bytes recorded for it`);
      }
      await writeSkippingZeros(fh, chunk.subarray(0, bytesRead), position + done);
      done += bytesRead;
    }
    const extra = await src.read(Buffer.alloc(1), 0, 1, f.size);
    if (extra.bytesRead !== 0) throw new EdgekitError(`FAT: "${f.entry.path}": ${content.path} is longer than the ${f.size} bytes recorded for it`);
  } finally {
    await src.close();
  }
}

export async function writeFat(tree: Tree, outPath: string, opts: FatOptions): Promise<FatLayout> {
  const what = `FAT filesystem "${opts.label}"`;
  checkOptions(opts, what);
  const { dirs, files } = planTree(tree, opts.label !== '');
  const root = dirs[0];
  const g = fatGeometry(opts.size, opts.fatType, root.entryCount, what);
  const clusterBytes = g.sectorsPerCluster * FAT_SECTOR;
  const nextCluster = allocate(g, dirs, files);
  const usedClusters = nextCluster - 2;
  if (usedClusters > g.clusterCount) {
    throw new EdgekitError(`${what} does not fit in ${opts.size} bytes: needs ${bytesNeeded(g, usedClusters)} bytes`);
  }

  const clusterOffset = (cluster: number) => (g.dataStartSector + (cluster - 2) * g.sectorsPerCluster) * FAT_SECTOR;
  const dirCluster = new Map(dirs.map((d) => [d.path, d.firstCluster]));
  const fileCluster = new Map(files.map((f) => [f.entry.path, f.firstCluster]));
  const clusterOf = (e: TreeEntry) => (e.type === 'dir' ? dirCluster.get(e.path)! : fileCluster.get(e.path)!);
  const stamp = dosTimestamp(opts.mtime);
  const chains = [...dirs, ...files].filter((n) => n.clusters > 0).map((n) => ({ first: n.firstCluster, count: n.clusters }));
  const fat = fatTable(g, nextCluster, chains);
  const boot = bootSector(g, opts);

  await writeAtomic(outPath, async (tmp) => {
    const fh = await open(tmp, 'w', 0o644);
    try {
      await fh.truncate(opts.size);
      await writeAll(fh, boot, 0);
      if (g.fatType === 'fat32') {
        const free = g.clusterCount - usedClusters;
        const info = fsInfoSector(free, free > 0 ? nextCluster : 0xffffffff);
        await writeAll(fh, info, FAT32_FSINFO_SECTOR * FAT_SECTOR);
        await writeAll(fh, boot, FAT32_BACKUP_BOOT_SECTOR * FAT_SECTOR);
        await writeAll(fh, info, (FAT32_BACKUP_BOOT_SECTOR + 1) * FAT_SECTOR);
      }
      for (let copy = 0; copy < FAT_COUNT; copy++) {
        await writeAll(fh, fat, (g.reservedSectors + copy * g.fatSectors) * FAT_SECTOR);
      }
      for (const d of dirs) {
        const bytes = directoryBytes(d, g, opts, stamp, clusterOf);
        const position = d.path === '' && g.fatType === 'fat16' ? (g.reservedSectors + FAT_COUNT * g.fatSectors) * FAT_SECTOR : clusterOffset(d.firstCluster);
        await writeAll(fh, bytes, position);
      }
      for (const f of files) if (f.size > 0) await writeContent(fh, f, clusterOffset(f.firstCluster));
    } finally {
      await fh.close();
    }
  });

  return {
    fatType: g.fatType,
    clusterSize: clusterBytes,
    clusterCount: g.clusterCount,
    usedClusters,
    files: files.map((f) => ({ path: f.entry.path, offset: f.size > 0 ? clusterOffset(f.firstCluster) : 0, length: f.size })),
  };
}
