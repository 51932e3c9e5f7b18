/**
 * The files a Pi asks for during USB boot, looked up in the folder the user named. Two layouts
 * exist in the Raspberry Pi usbboot repository and both work here:
 *  - plain files (msd/: bootcode.bin, start.elf, ...; older mass-storage-gadget64: bootcode4.bin,
 *    config.txt, boot.img);
 *  - bootfiles.bin, a tar archive with one folder per chip (2710/, 2711/, 2712/) that keeps the
 *    boot code, firmware and config in step; a plain file in <dir>/<chip folder>/ overrides an
 *    archive member, and <dir>/<name> is the last resort.
 * Names come from the device, so anything that could leave the folder is refused.
 */
import { open, stat, type FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { EdgekitError } from '../../util/errors.js';
import { bootfilesPrefix, secondStageFile, type Chip } from './protocol.js';

/** A file to send: its size and a way to read a piece of it (files can be tens of MiB). */
export interface BootFile {
  name: string;
  /** Where it came from, for messages: a path, or archive!member. */
  origin: string;
  size: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}

export const BOOTFILES_ARCHIVE = 'bootfiles.bin';

export class BootFolder {
  private constructor(
    readonly dir: string,
    private readonly archive: ArchiveMember[] | undefined,
  ) {}

  /** Opens `dir`; refuses a folder that holds no boot code at all. */
  static async open(dir: string): Promise<BootFolder> {
    const st = await stat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new EdgekitError(`${dir}: usbboot folder not found`);
    const archivePath = join(dir, BOOTFILES_ARCHIVE);
    const archive = (await isFile(archivePath)) ? await listTar(archivePath) : undefined;
    const folder = new BootFolder(resolve(dir), archive);
    if (!archive) {
      const chips: Chip[] = ['bcm2835', 'bcm2711', 'bcm2712'];
      const present = await Promise.all(chips.map((c) => isFile(join(dir, secondStageFile(c)))));
      if (!present.some(Boolean)) {
        throw new EdgekitError(`${dir}: no bootcode.bin, bootcode4.bin, bootcode5.bin or ${BOOTFILES_ARCHIVE} (see docs/rpiboot.md)`);
      }
    }
    return folder;
  }

  get usesArchive(): boolean {
    return this.archive !== undefined;
  }

  /**
   * The file a device asked for, or undefined when there is none or the name is refused.
   * `refused` is told why a name was not even looked up.
   */
  async find(name: string, chip: Chip, refused?: (why: string) => void): Promise<BootFile | undefined> {
    const why = unsafeName(name);
    if (why) {
      refused?.(why);
      return undefined;
    }
    const prefix = bootfilesPrefix(chip);
    if (this.archive) {
      const override = await this.plainFile(join(prefix, name), name);
      if (override) return override;
      const wanted = `${prefix}/${name}`.toLowerCase();
      const member = this.archive.find((m) => m.name.toLowerCase() === wanted);
      if (member) return memberFile(join(this.dir, BOOTFILES_ARCHIVE), member, name);
    }
    return this.plainFile(name, name);
  }

  private async plainFile(rel: string, name: string): Promise<BootFile | undefined> {
    const path = join(this.dir, rel);
    // unsafeName() is the guard; this second check keeps a future change to it from opening the host.
    const inside = relative(this.dir, resolve(path));
    if (inside.startsWith('..') || isAbsolute(inside)) return undefined;
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch {
      return undefined;
    }
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      return undefined;
    }
    return handleFile(fh, name, path, 0, st.size);
  }
}

/** Why a requested name is not served, or undefined when it may be looked up. */
export function unsafeName(name: string): string | undefined {
  if (name.includes('..')) return 'contains ".."';
  if (name.startsWith('/') || name.includes('\\') || /^[a-zA-Z]:/.test(name)) return 'not a relative path';
  if (name.includes('\0')) return 'contains NUL';
  return undefined;
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() ?? false;
}

function handleFile(fh: FileHandle, name: string, origin: string, start: number, size: number): BootFile {
  return {
    name,
    origin,
    size,
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, start + offset + got);
        if (!bytesRead) throw new EdgekitError(`${origin}: file shrank while it was being sent`);
        got += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}

async function memberFile(archivePath: string, member: ArchiveMember, name: string): Promise<BootFile> {
  const fh = await open(archivePath, 'r');
  return handleFile(fh, name, `${archivePath}!${member.name}`, member.offset, member.size);
}

interface ArchiveMember {
  name: string;
  offset: number;
  size: number;
}

/**
 * Lists the regular files of a tar archive (ustar/GNU headers: 512-byte header, name at 0,
 * octal size at 124, type flag at 156, ustar prefix at 345; data padded to 512 bytes).
 * bootfiles.bin is plain tar, so nothing more is needed than the member table.
 */
async function listTar(path: string): Promise<ArchiveMember[]> {
  const fh = await open(path, 'r');
  try {
    const { size: total } = await fh.stat();
    const members: ArchiveMember[] = [];
    const header = Buffer.alloc(512);
    let pos = 0;
    let longName: string | undefined;
    while (pos + 512 <= total) {
      await fh.read(header, 0, 512, pos);
      if (header.every((b) => b === 0)) break;
      const size = parseOctal(header.subarray(124, 136));
      if (size === undefined) throw new EdgekitError(`${path}: not a tar archive (bad header at byte ${pos})`);
      const type = String.fromCharCode(header[156] || 0x30);
      const dataStart = pos + 512;
      if (dataStart + size > total) throw new EdgekitError(`${path}: truncated archive (member at byte ${pos})`);
      if (type === 'L') {
        const b = Buffer.alloc(size);
        await fh.read(b, 0, size, dataStart);
        longName = cString(b);
      } else {
        const ustar = header.subarray(257, 262).toString('latin1') === 'ustar';
        const prefix = ustar ? cString(header.subarray(345, 500)) : '';
        const name = longName ?? (prefix ? `${prefix}/` : '') + cString(header.subarray(0, 100));
        longName = undefined;
        if (type === '0' || type === '7') members.push({ name: name.replace(/^\.\//, ''), offset: dataStart, size });
      }
      pos = dataStart + Math.ceil(size / 512) * 512;
    }
    return members;
  } finally {
    await fh.close();
  }
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.subarray(0, nul < 0 ? b.length : nul).toString('utf8');
}

function parseOctal(field: Buffer): number | undefined {
  const text = cString(field).trim();
  if (!/^[0-7]+$/.test(text)) return undefined;
  return parseInt(text, 8);
}
