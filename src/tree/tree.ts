/**
 * A root filesystem as data: an ordered set of entries built in memory, never by mounting.
 * Every writer (cpio, squashfs, FAT) consumes a Tree, so what goes in an image is decided once.
 *
 * Paths are relative, '/'-separated, without a leading slash ('bin/busybox'); the root is ''.
 * Timestamps are not per entry: writers stamp every entry with one fixed mtime
 * (SOURCE_DATE_EPOCH) so output is reproducible.
 */
import { readFile } from 'node:fs/promises';

/** File bytes: held in memory, or a file on disk (a cache entry) read when written out. */
export type FileContent = { kind: 'buffer'; data: Buffer } | { kind: 'file'; path: string; size: number };

interface Base {
  path: string;
  mode: number; // permission bits only (07777); the type is in `type`
  uid: number;
  gid: number;
}
export interface DirEntry extends Base { type: 'dir' }
export interface FileEntry extends Base { type: 'file'; content: FileContent }
export interface SymlinkEntry extends Base { type: 'symlink'; target: string }
export interface DeviceEntry extends Base { type: 'char' | 'block'; major: number; minor: number }
export interface FifoEntry extends Base { type: 'fifo' }
export type TreeEntry = DirEntry | FileEntry | SymlinkEntry | DeviceEntry | FifoEntry;

export function contentSize(c: FileContent): number {
  return c.kind === 'buffer' ? c.data.length : c.size;
}

export async function readContent(c: FileContent): Promise<Buffer> {
  return c.kind === 'buffer' ? c.data : readFile(c.path);
}

export function normalizePath(p: string): string {
  const parts: string[] = [];
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') throw new Error(`path escapes the tree: ${p}`);
    parts.push(seg);
  }
  return parts.join('/');
}

/** Byte-wise comparison of UTF-8 paths: the order is the same on every machine and locale. */
export function comparePaths(a: string, b: string): number {
  const ba = Buffer.from(a);
  const bb = Buffer.from(b);
  return Buffer.compare(ba, bb);
}

export class Tree {
  private entries = new Map<string, TreeEntry>();

  constructor() {
    this.entries.set('', { path: '', type: 'dir', mode: 0o755, uid: 0, gid: 0 });
  }

  /** Adds or replaces an entry; missing parent directories are created (0755, root). */
  add(entry: TreeEntry): void {
    const path = normalizePath(entry.path);
    this.mkdirp(parentOf(path));
    const existing = this.entries.get(path);
    if (existing?.type === 'dir' && entry.type !== 'dir') this.removeUnder(path);
    this.entries.set(path, { ...entry, path });
  }

  dir(path: string, mode = 0o755, uid = 0, gid = 0): void {
    this.add({ path, type: 'dir', mode, uid, gid });
  }
  file(path: string, data: string | Buffer, mode = 0o644, uid = 0, gid = 0): void {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    this.add({ path, type: 'file', mode, uid, gid, content: { kind: 'buffer', data: buf } });
  }
  symlink(path: string, target: string): void {
    this.add({ path, type: 'symlink', target, mode: 0o777, uid: 0, gid: 0 });
  }

  mkdirp(path: string): void {
    const norm = normalizePath(path);
    if (norm === '') return;
    const existing = this.entries.get(norm);
    if (existing?.type === 'dir') return;
    this.mkdirp(parentOf(norm));
    if (!existing) this.entries.set(norm, { path: norm, type: 'dir', mode: 0o755, uid: 0, gid: 0 });
  }

  get(path: string): TreeEntry | undefined {
    return this.entries.get(normalizePath(path));
  }
  has(path: string): boolean {
    return this.entries.has(normalizePath(path));
  }
  remove(path: string): void {
    const norm = normalizePath(path);
    this.removeUnder(norm);
    this.entries.delete(norm);
  }
  private removeUnder(path: string): void {
    const prefix = path === '' ? '' : path + '/';
    for (const key of [...this.entries.keys()]) if (key !== path && key.startsWith(prefix)) this.entries.delete(key);
  }

  /** All entries, parents before children, sorted by path bytes (the root '' first). */
  list(): TreeEntry[] {
    return [...this.entries.values()].sort((a, b) => comparePaths(a.path, b.path));
  }

  /** Every directory's direct children, sorted by name bytes; one pass, for writers that walk the tree. */
  childrenByDir(): Map<string, TreeEntry[]> {
    const byDir = new Map<string, TreeEntry[]>();
    for (const e of this.list()) {
      if (e.type === 'dir') byDir.set(e.path, byDir.get(e.path) ?? []);
      if (e.path === '') continue;
      const parent = parentOf(e.path);
      const kids = byDir.get(parent) ?? [];
      kids.push(e);
      byDir.set(parent, kids);
    }
    return byDir;
  }

  get size(): number {
    return this.entries.size;
  }
}

export function parentOf(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? '' : path.slice(0, i);
}

export function baseName(path: string): string {
  const i = path.lastIndexOf('/');
  return i < 0 ? path : path.slice(i + 1);
}
