/**
 * A sample root filesystem that exercises the awkward corners of the payload writers, plus
 * helpers to compare a real tool's listing or extraction against the Tree it came from.
 */
import { randomBytes } from 'node:crypto';
import { lstatSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tree, TreeEntry, contentSize } from '../../src/tree/tree.js';

export interface SampleTreeOptions {
  /** Directory where on-disk ('file' kind) contents are written. */
  scratch: string;
  blockSize?: number;
  /** Size of the big mixed file; 20 MB unless given. */
  bigSize?: number;
  /** Children of the big directory; enough to need several directory headers and indexes. */
  manyEntries?: number;
}

export function buildSampleTree(opts: SampleTreeOptions): Tree {
  const blockSize = opts.blockSize ?? 131072;
  const bigSize = opts.bigSize ?? 20 * 1000 * 1000;
  const t = new Tree();
  t.dir('bin');
  t.dir('etc');
  t.dir('tmp', 0o1777);
  t.dir('home/user', 0o700, 1000, 1000);
  t.file('home/user/.profile', 'export PS1="$ "\n', 0o600, 1000, 1000);
  t.file('etc/hostname', 'edge\n');
  t.file('etc/empty', Buffer.alloc(0));
  t.file('bin/su', Buffer.from('#!/bin/sh\necho su\n'), 0o4755);
  t.file('bin/wall', Buffer.from('wall'), 0o2755, 0, 5);
  t.file('etc/exact-block', randomBytes(blockSize));
  t.file('etc/block-plus-one', Buffer.concat([Buffer.alloc(blockSize, 0x61), Buffer.from('z')]));
  t.file('etc/zeros', Buffer.alloc(blockSize * 3));
  t.symlink('bin/sh', 'su');
  t.symlink('etc/long-link', 'x/'.repeat(900) + 'end');
  t.add({ path: 'dev/null', type: 'char', major: 1, minor: 3, mode: 0o666, uid: 0, gid: 0 });
  t.add({ path: 'dev/sda', type: 'block', major: 8, minor: 0, mode: 0o660, uid: 0, gid: 6 });
  t.add({ path: 'dev/big-minor', type: 'char', major: 254, minor: 70000, mode: 0o600, uid: 0, gid: 0 });
  t.add({ path: 'run/initctl', type: 'fifo', mode: 0o600, uid: 0, gid: 0 });
  t.file('etc/' + 'n'.repeat(255), 'long name\n');
  t.dir('empty-dir');

  let deep = 'deep';
  for (let i = 0; i < 40; i++) deep += `/level-${i}`;
  t.file(deep + '/leaf', 'bottom\n');

  const many = opts.manyEntries ?? 700;
  for (let i = 0; i < many; i++) {
    const name = `usr/share/many/entry-with-a-fairly-long-name-${String(i).padStart(5, '0')}`;
    if (i % 50 === 7) t.dir(name);
    else if (i % 50 === 9) t.symlink(name, `target-${i}`);
    else t.file(name, `content ${i}\n`.repeat(i % 5));
  }

  // The big file mixes compressible text, incompressible noise and an all-zero stretch.
  const bigPath = join(opts.scratch, 'big.bin');
  const big = Buffer.alloc(bigSize);
  let off = 0;
  let phase = 0;
  while (off < bigSize) {
    const len = Math.min(bigSize - off, 1_300_000 + phase * 7);
    if (phase % 3 === 0) big.fill(Buffer.from(`line ${phase} of compressible text\n`), off, off + len);
    else if (phase % 3 === 1) randomBytes(len).copy(big, off);
    off += len;
    phase++;
  }
  writeFileSync(bigPath, big);
  t.add({ path: 'opt/big.bin', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: bigPath, size: bigSize } });
  const smallPath = join(opts.scratch, 'small-on-disk.txt');
  writeFileSync(smallPath, 'read from disk\n');
  t.add({ path: 'opt/small.txt', type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: smallPath, size: 15 } });
  return t;
}

const TYPE_CHAR: Record<TreeEntry['type'], string> = { dir: 'd', file: '-', symlink: 'l', char: 'c', block: 'b', fifo: 'p' };

/** `ls -l` style mode string, as cpio and unsquashfs print it. */
export function modeString(e: TreeEntry): string {
  const m = e.mode;
  const bit = (mask: number, ch: string) => (m & mask ? ch : '-');
  const exec = (x: number, special: number, set: string, unset: string) =>
    m & special ? (m & x ? set : unset) : m & x ? 'x' : '-';
  return (
    TYPE_CHAR[e.type] +
    bit(0o400, 'r') + bit(0o200, 'w') + exec(0o100, 0o4000, 's', 'S') +
    bit(0o040, 'r') + bit(0o020, 'w') + exec(0o010, 0o2000, 's', 'S') +
    bit(0o004, 'r') + bit(0o002, 'w') + exec(0o001, 0o1000, 't', 'T')
  );
}

/** What a listing shows for one entry, in a form both sides can be compared in. */
export interface ListedEntry {
  path: string;
  mode: string;
  uid: number;
  gid: number;
  /** Size for files and symlinks, "major,minor" for devices, '' for directories and fifos. */
  size: string;
  target?: string;
}

export function expectedListing(tree: Tree): ListedEntry[] {
  return tree.list().map((e) => {
    const base = { path: e.path, mode: modeString(e), uid: e.uid, gid: e.gid };
    switch (e.type) {
      case 'file':
        return { ...base, size: String(contentSize(e.content)) };
      case 'symlink':
        return { ...base, size: String(Buffer.byteLength(e.target)), target: e.target };
      case 'char':
      case 'block':
        return { ...base, size: `${e.major},${e.minor}` };
      default:
        return { ...base, size: '' };
    }
  });
}

/** Differences between what was extracted under `dir` and the tree (empty when identical). */
export function compareExtracted(tree: Tree, dir: string, opts: { devices: boolean }): string[] {
  const problems: string[] = [];
  const seen = new Set<string>();
  const walk = (rel: string) => {
    for (const name of readdirSync(join(dir, rel))) {
      const p = rel === '' ? name : `${rel}/${name}`;
      seen.add(p);
      if (lstatSync(join(dir, p)).isDirectory()) walk(p);
    }
  };
  walk('');
  for (const e of tree.list()) {
    if (e.path === '') continue;
    if (!opts.devices && (e.type === 'char' || e.type === 'block' || e.type === 'fifo')) {
      seen.delete(e.path);
      continue;
    }
    if (!seen.delete(e.path)) {
      problems.push(`missing ${e.path}`);
      continue;
    }
    const full = join(dir, e.path);
    const st = lstatSync(full);
    if ((st.mode & 0o7777) !== e.mode && e.type !== 'symlink') problems.push(`${e.path}: mode ${(st.mode & 0o7777).toString(8)}`);
    if (st.uid !== e.uid || st.gid !== e.gid) problems.push(`${e.path}: owner ${st.uid}:${st.gid}`);
    switch (e.type) {
      case 'dir':
        if (!st.isDirectory()) problems.push(`${e.path}: not a directory`);
        break;
      case 'file': {
        if (!st.isFile()) problems.push(`${e.path}: not a file`);
        else {
          const want = e.content.kind === 'buffer' ? e.content.data : readFileSync(e.content.path);
          if (!readFileSync(full).equals(want)) problems.push(`${e.path}: content differs`);
        }
        break;
      }
      case 'symlink':
        if (!st.isSymbolicLink() || readlinkSync(full) !== e.target) problems.push(`${e.path}: symlink differs`);
        break;
      case 'char':
      case 'block': {
        const isDev = e.type === 'char' ? st.isCharacterDevice() : st.isBlockDevice();
        const major = Number((BigInt(st.rdev) >> 8n) & 0xfffn);
        const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & 0xfff00n));
        if (!isDev || major !== e.major || minor !== e.minor) problems.push(`${e.path}: device ${major},${minor}`);
        break;
      }
      case 'fifo':
        if (!st.isFIFO()) problems.push(`${e.path}: not a fifo`);
        break;
    }
  }
  for (const extra of seen) problems.push(`unexpected ${extra}`);
  return problems;
}
