/**
 * Kernel modules of an unpacked linux-image package: a name -> {file, depends} index read from each
 * module's ELF `.modinfo` section (what modinfo(8) reads), and the load-ordered closure of a set of
 * wanted modules, so an initramfs can carry just those and load them with plain insmod.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { comparePaths } from '../tree/tree.js';
import { writeFileAtomic } from '../util/atomic.js';
import { EdgekitError } from '../util/errors.js';
import { compressionOf, decompressBuffer } from './decompress.js';
import type { UnpackedDeb } from './deb.js';

export interface ModuleInfo {
  /** Path in the package ('usr/lib/modules/<kver>/kernel/…/x.ko.xz'); absent for built-in modules. */
  path?: string;
  /** The (possibly compressed) bytes in the unpack cache; absent for built-in modules. */
  content?: string;
  depends: string[];
  aliases?: string[];
  builtin?: boolean;
}
export type ModuleIndex = Map<string, ModuleInfo>;

const MODULE_PATH = /^(?:usr\/)?lib\/modules\/[^/]+\/.*\.ko(?:\.(?:xz|zst|gz))?$/;
const BUILTIN_PATH = /^(?:usr\/)?lib\/modules\/[^/]+\/modules\.builtin$/;
const CACHE_VERSION = 1;

/** Module names treat '-' and '_' alike; the kernel's canonical form uses '_'. */
export function moduleName(name: string): string {
  return name.replace(/-/g, '_');
}

function nameFromPath(path: string): string {
  return moduleName(path.slice(path.lastIndexOf('/') + 1).replace(/\.ko(\..*)?$/, ''));
}

/** The NUL-separated key=value strings of an ELF object's `.modinfo` section. */
export function readModinfo(elf: Buffer, where: string): Array<[string, string]> {
  if (elf.readUInt32BE(0) !== 0x7f454c46) throw new EdgekitError(`${where}: not an ELF file`);
  const is64 = elf[4] === 2;
  const le = elf[5] === 1;
  const u16 = (o: number) => (le ? elf.readUInt16LE(o) : elf.readUInt16BE(o));
  const u32 = (o: number) => (le ? elf.readUInt32LE(o) : elf.readUInt32BE(o));
  const uN = (o: number) => (is64 ? Number(le ? elf.readBigUInt64LE(o) : elf.readBigUInt64BE(o)) : u32(o));
  const shoff = uN(is64 ? 0x28 : 0x20);
  const shentsize = u16(is64 ? 0x3a : 0x2e);
  const shnum = u16(is64 ? 0x3c : 0x30);
  const shstrndx = u16(is64 ? 0x3e : 0x32);
  const section = (i: number) => {
    const base = shoff + i * shentsize;
    return { name: u32(base), offset: uN(base + (is64 ? 0x18 : 0x10)), size: uN(base + (is64 ? 0x20 : 0x14)) };
  };
  const strtab = section(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = section(i);
    const nameStart = strtab.offset + s.name;
    const name = elf.toString('latin1', nameStart, elf.indexOf(0, nameStart));
    if (name !== '.modinfo') continue;
    return elf
      .toString('utf8', s.offset, s.offset + s.size)
      .split('\0')
      .filter((kv) => kv.includes('='))
      .map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)] as [string, string]);
  }
  throw new EdgekitError(`${where}: no .modinfo section`);
}

/** A module's uncompressed ELF bytes (for an initramfs whose insmod cannot read .ko.xz). */
export async function moduleBytes(info: ModuleInfo): Promise<Buffer> {
  if (!info.content || !info.path) throw new EdgekitError(`module is built into the kernel, it has no file`);
  return decompressBuffer(await readFile(info.content), compressionOf(info.path));
}

async function buildIndex(unpacked: UnpackedDeb): Promise<ModuleIndex> {
  const index: ModuleIndex = new Map();
  const files = unpacked.entries.filter((e) => e.type === 'file' && MODULE_PATH.test(e.path));
  files.sort((a, b) => comparePaths(a.path, b.path));
  for (const e of files) {
    const info: ModuleInfo = { path: e.path, content: e.content, depends: [] };
    const fields = readModinfo(await moduleBytes(info), e.path);
    let name = nameFromPath(e.path);
    const aliases: string[] = [];
    for (const [k, v] of fields) {
      if (k === 'name') name = moduleName(v);
      else if (k === 'depends') info.depends = v.split(',').filter((d) => d !== '').map(moduleName);
      else if (k === 'alias') aliases.push(v);
    }
    if (aliases.length > 0) info.aliases = aliases;
    index.set(name, info);
  }
  for (const e of unpacked.entries.filter((x) => x.type === 'file' && BUILTIN_PATH.test(x.path))) {
    for (const line of (await readFile(e.content!, 'utf8')).split('\n')) {
      if (line.trim() === '') continue;
      const name = nameFromPath(line.trim());
      if (!index.has(name)) index.set(name, { depends: [], builtin: true });
    }
  }
  if (files.length === 0) throw new EdgekitError(`${unpacked.control.Package ?? unpacked.dir}: no kernel modules in this package`);
  return index;
}

/**
 * Every module of the package by name. Computed once per .deb and kept beside its unpacked files
 * (reading ~4000 compressed modules takes a while).
 */
export async function moduleIndex(unpacked: UnpackedDeb): Promise<ModuleIndex> {
  const cachePath = join(unpacked.dir, 'modules.json');
  if (existsSync(cachePath)) {
    const cached = JSON.parse(await readFile(cachePath, 'utf8'));
    if (cached.version === CACHE_VERSION) {
      const byPath = new Map(unpacked.entries.map((e) => [e.path, e.content]));
      return new Map(
        (cached.modules as Array<[string, ModuleInfo]>).map(([n, m]) => [n, m.path ? { ...m, content: byPath.get(m.path) } : m]),
      );
    }
  }
  const index = await buildIndex(unpacked);
  const serial = [...index].map(([n, m]) => [n, { ...m, content: undefined }]);
  await writeFileAtomic(cachePath, JSON.stringify({ version: CACHE_VERSION, modules: serial }));
  return index;
}

/**
 * The modules to load for `wanted`, dependencies first (so a plain insmod sequence works), each
 * once; built-in modules are satisfied by the kernel and left out. Ties are broken by the order of
 * `wanted` and of each module's `depends`, so the result is deterministic.
 */
export function moduleClosure(index: ModuleIndex, wanted: string[]): string[] {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string, neededBy?: string): void => {
    const name = moduleName(raw);
    if (done.has(name)) return;
    const info = index.get(name);
    if (!info) throw new EdgekitError(`unknown kernel module ${raw}${neededBy ? ` (needed by ${neededBy})` : ''}`);
    if (visiting.has(name)) throw new EdgekitError(`kernel module dependency cycle through ${name}`);
    visiting.add(name);
    for (const dep of info.depends) visit(dep, name);
    visiting.delete(name);
    done.add(name);
    if (!info.builtin) order.push(name);
  };
  for (const w of wanted) visit(w);
  return order;
}
