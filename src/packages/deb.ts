/**
 * .deb files: an ar archive of debian-binary, control.tar.* and data.tar.*. The data is unpacked
 * once per .deb into the cache (keyed by the .deb's sha256), file contents as plain files plus an
 * index.json of every entry, so a warm build reads no archive at all. Maintainer scripts are never run.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import type { Readable } from 'node:stream';
import { Tree, normalizePath, type TreeEntry } from '../tree/tree.js';
import { cacheDir } from '../util/cache.js';
import { EdgekitError } from '../util/errors.js';
import { readArMembers, type ArMember } from './ar.js';
import { parseStanzas, type Stanza } from './control.js';
import { compressionOf, decompressFileRange } from './decompress.js';

export type DebEntryType = 'dir' | 'file' | 'symlink' | 'char' | 'block' | 'fifo';

export interface DebEntry {
  path: string; // relative, no leading './' or '/'; '' is the root
  type: DebEntryType;
  mode: number; // permission bits (07777)
  uid: number;
  gid: number;
  size?: number; // files
  content?: string; // files: absolute path of the bytes in the unpack cache (hard links share one)
  target?: string; // symlinks
  major?: number; // devices
  minor?: number;
}

export interface UnpackedDeb {
  sha256: string;
  dir: string; // the cache directory
  control: Stanza; // DEBIAN/control fields
  entries: DebEntry[]; // in archive order
}

const INDEX_VERSION = 1;

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function member(members: ArMember[], prefix: string, debPath: string): ArMember {
  const m = members.find((x) => x.name === prefix || x.name.startsWith(prefix + '.'));
  if (!m) throw new EdgekitError(`${debPath}: no ${prefix} member`);
  return m;
}

function memberStream(debPath: string, m: ArMember): Readable {
  return decompressFileRange(debPath, m.offset, m.offset + m.size, compressionOf(m.name));
}

function tarPath(name: string): string {
  return normalizePath(name.replace(/^\.?\//, ''));
}

/** The fields of a .deb's DEBIAN/control. */
export async function readDebControl(debPath: string): Promise<Stanza> {
  const members = await readArMembers(debPath);
  const extract = tar.extract();
  const source = memberStream(debPath, member(members, 'control.tar', debPath));
  source.on('error', (err) => extract.destroy(err));
  source.pipe(extract);
  let control: Stanza | undefined;
  for await (const entry of extract) {
    if (tarPath(entry.header.name) === 'control') {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      control = parseStanzas(Buffer.concat(chunks).toString('utf8'))[0];
    } else {
      entry.resume();
    }
  }
  if (!control) throw new EdgekitError(`${debPath}: control.tar has no control file`);
  return control;
}

const TAR_TYPES: Partial<Record<string, DebEntryType>> = {
  file: 'file',
  'contiguous-file': 'file',
  directory: 'dir',
  symlink: 'symlink',
  'character-device': 'char',
  'block-device': 'block',
  fifo: 'fifo',
};

/** Streams data.tar into `dir/files/<n>` and returns the entries with contents relative to `dir`. */
async function extractData(debPath: string, dir: string): Promise<DebEntry[]> {
  const members = await readArMembers(debPath);
  await mkdir(join(dir, 'files'), { recursive: true });
  const extract = tar.extract();
  const source = memberStream(debPath, member(members, 'data.tar', debPath));
  source.on('error', (err) => extract.destroy(err));
  source.pipe(extract);
  const entries: DebEntry[] = [];
  const byPath = new Map<string, DebEntry>();
  let fileNo = 0;
  for await (const item of extract) {
    const h = item.header;
    const path = tarPath(h.name);
    const base = { path, mode: (h.mode ?? 0) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0 };
    let entry: DebEntry;
    if (h.type === 'link') {
      // A hard link becomes a second file entry with the same bytes.
      const target = byPath.get(tarPath(h.linkname ?? ''));
      if (target?.type !== 'file') throw new EdgekitError(`${debPath}: hard link ${path} to a missing file ${h.linkname}`);
      entry = { ...base, type: 'file', size: target.size, content: target.content };
      item.resume();
    } else {
      const type = TAR_TYPES[h.type ?? ''];
      if (!type) {
        item.resume();
        continue; // pax/GNU extension headers are consumed by tar-stream itself; nothing else occurs in .debs
      }
      entry = { ...base, type };
      if (type === 'file') {
        const rel = `files/${fileNo++}`;
        await pipeline(item, createWriteStream(join(dir, rel), { mode: 0o644 }));
        entry.size = h.size ?? 0;
        entry.content = rel;
      } else {
        if (type === 'symlink') entry.target = h.linkname ?? '';
        if (type === 'char' || type === 'block') {
          entry.major = h.devmajor ?? 0;
          entry.minor = h.devminor ?? 0;
        }
        item.resume();
      }
    }
    entries.push(entry);
    byPath.set(path, entry);
  }
  return entries;
}

function withAbsoluteContent(dir: string, entries: DebEntry[]): DebEntry[] {
  return entries.map((e) => (e.content ? { ...e, content: join(dir, e.content) } : e));
}

/**
 * Unpacks a .deb into `cacheDir('unpacked', sha256)` unless already there. `sha256` may be passed
 * when already verified (the archive's fetch did), saving a re-hash.
 */
export async function unpackDeb(debPath: string, sha256?: string): Promise<UnpackedDeb> {
  const sha = sha256 ?? (await sha256File(debPath));
  const dir = cacheDir('unpacked', sha);
  const indexPath = join(dir, 'index.json');
  if (existsSync(indexPath)) {
    const index = JSON.parse(await readFile(indexPath, 'utf8'));
    if (index.version === INDEX_VERSION) {
      return { sha256: sha, dir, control: index.control, entries: withAbsoluteContent(dir, index.entries) };
    }
    await rm(dir, { recursive: true, force: true });
  }
  await mkdir(cacheDir('unpacked'), { recursive: true });
  const tmp = cacheDir('unpacked', `.${sha}.${process.pid}.${randomUUID().slice(0, 8)}.tmp`);
  await rm(tmp, { recursive: true, force: true });
  try {
    const control = await readDebControl(debPath);
    const entries = await extractData(debPath, tmp);
    await writeFile(join(tmp, 'index.json'), JSON.stringify({ version: INDEX_VERSION, sha256: sha, control, entries }));
    try {
      await rename(tmp, dir);
    } catch (err) {
      // Another process unpacked the same .deb first: theirs is identical.
      if (!existsSync(indexPath)) throw err;
      await rm(tmp, { recursive: true, force: true });
    }
    return { sha256: sha, dir, control, entries: withAbsoluteContent(dir, entries) };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    if (err instanceof EdgekitError) throw err;
    throw new EdgekitError(`${debPath}: cannot unpack: ${(err as Error).message}`);
  }
}

/** A package entry as a tree entry (at `path`, by default its own), file bytes by reference. */
export function toTreeEntry(e: DebEntry, path = e.path): TreeEntry {
  const base = { path, mode: e.mode, uid: e.uid, gid: e.gid };
  switch (e.type) {
    case 'dir':
      return { ...base, type: 'dir' };
    case 'file':
      return { ...base, type: 'file', content: { kind: 'file', path: e.content!, size: e.size ?? 0 } };
    case 'symlink':
      return { ...base, type: 'symlink', target: e.target ?? '' };
    case 'char':
    case 'block':
      return { ...base, type: e.type, major: e.major ?? 0, minor: e.minor ?? 0 };
    case 'fifo':
      return { ...base, type: 'fifo' };
  }
}

/**
 * Adds a package's files to `tree` as references into the unpack cache. Symlinks are kept as
 * symlinks and never followed. `filter` selects paths (relative, e.g. 'usr/bin/busybox').
 */
export function addDebToTree(tree: Tree, unpacked: UnpackedDeb, filter?: (path: string) => boolean): void {
  for (const e of unpacked.entries) {
    if (e.path === '') continue;
    if (filter && !filter(e.path)) continue;
    tree.add(toTreeEntry(e));
  }
}
