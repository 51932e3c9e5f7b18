/**
 * On-disk structures of squashfs 4.0 (little-endian): the superblock and the inode records.
 * Field order and sizes follow the kernel's fs/squashfs/squashfs_fs.h.
 */

export const SQUASHFS_MAGIC = 0x73717368;
export const SUPERBLOCK_SIZE = 96;
export const METADATA_SIZE = 8192;
/** Metadata block header bit: the block is stored uncompressed. */
export const METADATA_UNCOMPRESSED = 0x8000;
/** Data block and fragment size bit: the block is stored uncompressed. */
export const DATA_UNCOMPRESSED = 1 << 24;
export const INVALID_FRAGMENT = 0xffffffff;
export const INVALID_XATTR = 0xffffffff;
export const INVALID_TABLE = 0xffffffffffffffffn;

export enum Flag {
  UncompressedInodes = 0x0001,
  UncompressedData = 0x0002,
  UncompressedFragments = 0x0008,
  NoFragments = 0x0010,
  NoXattrs = 0x0200,
  CompressorOptions = 0x0400,
  UncompressedIds = 0x0800,
}

/** Inode types; a directory entry always records the basic type, even for an extended inode. */
export enum InodeType {
  Dir = 1,
  File = 2,
  Symlink = 3,
  BlockDev = 4,
  CharDev = 5,
  Fifo = 6,
  ExtDir = 8,
  ExtFile = 9,
}

export interface Superblock {
  inodeCount: number;
  mtime: number;
  blockSize: number;
  fragmentCount: number;
  flags: number;
  idCount: number;
  rootInodeRef: bigint;
  bytesUsed: number;
  idTableStart: number;
  inodeTableStart: number;
  directoryTableStart: number;
  fragmentTableStart: number;
  /** squashfs_fs.h's compression id. */
  compressor: number;
}

export function encodeSuperblock(s: Superblock): Buffer {
  const b = Buffer.alloc(SUPERBLOCK_SIZE);
  b.writeUInt32LE(SQUASHFS_MAGIC, 0);
  b.writeUInt32LE(s.inodeCount, 4);
  b.writeUInt32LE(s.mtime, 8);
  b.writeUInt32LE(s.blockSize, 12);
  b.writeUInt32LE(s.fragmentCount, 16);
  b.writeUInt16LE(s.compressor, 20);
  b.writeUInt16LE(Math.log2(s.blockSize), 22);
  b.writeUInt16LE(s.flags, 24);
  b.writeUInt16LE(s.idCount, 26);
  b.writeUInt16LE(4, 28); // version 4.0
  b.writeUInt16LE(0, 30);
  b.writeBigUInt64LE(s.rootInodeRef, 32);
  b.writeBigUInt64LE(BigInt(s.bytesUsed), 40);
  b.writeBigUInt64LE(BigInt(s.idTableStart), 48);
  b.writeBigUInt64LE(INVALID_TABLE, 56); // no xattrs
  b.writeBigUInt64LE(BigInt(s.inodeTableStart), 64);
  b.writeBigUInt64LE(BigInt(s.directoryTableStart), 72);
  b.writeBigUInt64LE(BigInt(s.fragmentTableStart), 80);
  b.writeBigUInt64LE(INVALID_TABLE, 88); // no export table
  return b;
}

export interface InodeHeader {
  type: InodeType;
  mode: number;
  uidIndex: number;
  gidIndex: number;
  mtime: number;
  inodeNumber: number;
}

function header(h: InodeHeader, rest: number): Buffer {
  const b = Buffer.alloc(16 + rest);
  b.writeUInt16LE(h.type, 0);
  b.writeUInt16LE(h.mode & 0o7777, 2);
  b.writeUInt16LE(h.uidIndex, 4);
  b.writeUInt16LE(h.gidIndex, 6);
  b.writeUInt32LE(h.mtime, 8);
  b.writeUInt32LE(h.inodeNumber, 12);
  return b;
}

export interface DirIndexEntry {
  /** Byte offset of a directory header within this directory's listing. */
  index: number;
  /** Directory-table-relative start of the metadata block holding that header. */
  start: number;
  /** Name of the header's first entry. */
  name: Buffer;
}

export interface DirInodeFields {
  linkCount: number;
  /** Listing size + 3 (the kernel counts "." and ".." as 3 bytes). */
  fileSize: number;
  blockIndex: number;
  blockOffset: number;
  parentInode: number;
  index: DirIndexEntry[];
}

/** A basic directory inode when it fits, the extended one (with its lookup index) otherwise. */
export function encodeDirInode(h: Omit<InodeHeader, 'type'>, d: DirInodeFields): Buffer {
  if (d.index.length === 0 && d.fileSize <= 0xffff) {
    const b = header({ ...h, type: InodeType.Dir }, 16);
    b.writeUInt32LE(d.blockIndex, 16);
    b.writeUInt32LE(d.linkCount, 20);
    b.writeUInt16LE(d.fileSize, 24);
    b.writeUInt16LE(d.blockOffset, 26);
    b.writeUInt32LE(d.parentInode, 28);
    return b;
  }
  const b = header({ ...h, type: InodeType.ExtDir }, 24);
  b.writeUInt32LE(d.linkCount, 16);
  b.writeUInt32LE(d.fileSize, 20);
  b.writeUInt32LE(d.blockIndex, 24);
  b.writeUInt32LE(d.parentInode, 28);
  b.writeUInt16LE(d.index.length, 32);
  b.writeUInt16LE(d.blockOffset, 34);
  b.writeUInt32LE(INVALID_XATTR, 36);
  const parts = [b];
  for (const ix of d.index) {
    const e = Buffer.alloc(12);
    e.writeUInt32LE(ix.index, 0);
    e.writeUInt32LE(ix.start, 4);
    e.writeUInt32LE(ix.name.length - 1, 8);
    parts.push(e, ix.name);
  }
  return Buffer.concat(parts);
}

export interface FileInodeFields {
  blocksStart: number;
  fileSize: number;
  fragment: number;
  fragmentOffset: number;
  /** Bytes of the file held by all-zero blocks that were not stored. */
  sparseBytes: number;
  blockSizes: number[];
}

/** A basic file inode when its numbers fit in 32 bits, the extended one otherwise. */
export function encodeFileInode(h: Omit<InodeHeader, 'type'>, f: FileInodeFields): Buffer {
  const basic = f.blocksStart <= 0xffffffff && f.fileSize <= 0xffffffff && f.sparseBytes === 0;
  const fixed = basic ? 16 : 40;
  const b = header({ ...h, type: basic ? InodeType.File : InodeType.ExtFile }, fixed + 4 * f.blockSizes.length);
  let o = 16;
  if (basic) {
    b.writeUInt32LE(f.blocksStart, o);
    b.writeUInt32LE(f.fragment, o + 4);
    b.writeUInt32LE(f.fragmentOffset, o + 8);
    b.writeUInt32LE(f.fileSize, o + 12);
    o += 16;
  } else {
    b.writeBigUInt64LE(BigInt(f.blocksStart), o);
    b.writeBigUInt64LE(BigInt(f.fileSize), o + 8);
    b.writeBigUInt64LE(BigInt(f.sparseBytes), o + 16);
    b.writeUInt32LE(1, o + 24); // link count
    b.writeUInt32LE(f.fragment, o + 28);
    b.writeUInt32LE(f.fragmentOffset, o + 32);
    b.writeUInt32LE(INVALID_XATTR, o + 36);
    o += 40;
  }
  for (const s of f.blockSizes) {
    b.writeUInt32LE(s, o);
    o += 4;
  }
  return b;
}

export function encodeSymlinkInode(h: Omit<InodeHeader, 'type'>, target: Buffer): Buffer {
  const b = header({ ...h, type: InodeType.Symlink }, 8 + target.length);
  b.writeUInt32LE(1, 16);
  b.writeUInt32LE(target.length, 20);
  target.copy(b, 24);
  return b;
}

/** Linux's new_encode_dev: minor's low byte, then 12 bits of major, then minor's high bits. */
export function encodeDevNumber(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

export function encodeDeviceInode(h: Omit<InodeHeader, 'type'>, kind: 'char' | 'block', major: number, minor: number): Buffer {
  const b = header({ ...h, type: kind === 'char' ? InodeType.CharDev : InodeType.BlockDev }, 8);
  b.writeUInt32LE(1, 16);
  b.writeUInt32LE(encodeDevNumber(major, minor), 20);
  return b;
}

export function encodeFifoInode(h: Omit<InodeHeader, 'type'>): Buffer {
  const b = header({ ...h, type: InodeType.Fifo }, 4);
  b.writeUInt32LE(1, 16);
  return b;
}
