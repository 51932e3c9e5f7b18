/**
 * U-Boot's environment block and legacy script image, byte for byte as U-Boot reads them.
 *
 * Environment block (env/common.c, include/env_internal.h): a little-endian CRC-32 of the data
 * area, one flags byte when the build keeps a redundant copy, then the data area: `key=value`
 * strings each ending in NUL, sorted by key (U-Boot's `saveenv`/`env export` write them sorted),
 * an extra NUL closing the list, NUL padding to the configured size.
 *
 * Legacy script image (`mkimage -T script`): the 64-byte big-endian image header, then a
 * multi-file body: a table of big-endian u32 sub-image sizes closed by 0, then the script text.
 */
import { crc32 } from '../util/crc32.js';
import { EdgekitError } from '../util/errors.js';

export interface UbootEnvOptions {
  /** The whole block in bytes, CONFIG_ENV_SIZE (0x4000 for the Raspberry Pi builds). */
  size: number;
  /** CONFIG_SYS_REDUNDAND_ENVIRONMENT: a flags byte follows the CRC (the caller writes both copies). */
  redundant?: boolean;
  /** The redundant copy's serial number (the newer copy wins); 1 for a fresh image. */
  flags?: number;
}

export interface ParsedUbootEnv {
  vars: Record<string, string>;
  flags?: number;
}

function headerSize(redundant?: boolean): number {
  return redundant ? 5 : 4;
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Build an environment block; throws when a name or value cannot be stored or the block is too small. */
export function buildUbootEnv(vars: Record<string, string>, opts: UbootEnvOptions): Buffer {
  const head = headerSize(opts.redundant);
  if (!Number.isInteger(opts.size) || opts.size <= head + 2) {
    throw new EdgekitError(`U-Boot environment: size ${opts.size} is too small`);
  }
  const parts: Buffer[] = [];
  for (const key of Object.keys(vars).sort(byteOrder)) {
    const value = vars[key];
    if (key === '' || /[=\0\n]/.test(key)) throw new EdgekitError(`U-Boot environment: bad variable name ${JSON.stringify(key)}`);
    if (value.includes('\0')) throw new EdgekitError(`U-Boot environment: value of ${key} contains NUL`);
    parts.push(Buffer.from(`${key}=${value}\0`));
  }
  const payload = Buffer.concat(parts);
  const dataSize = opts.size - head;
  // The list must end in an empty string (a second NUL) within the data area.
  if (payload.length + 1 > dataSize) {
    throw new EdgekitError(`U-Boot environment: ${payload.length + 1} bytes of variables do not fit in ${dataSize}`);
  }
  const block = Buffer.alloc(opts.size, 0);
  payload.copy(block, head);
  block.writeUInt32LE(crc32(block.subarray(head)), 0);
  if (opts.redundant) block[4] = opts.flags ?? 1;
  return block;
}

/** Read an environment block (the whole file); throws on a CRC mismatch, as U-Boot rejects it. */
export function parseUbootEnv(buf: Buffer, opts: { redundant?: boolean } = {}): ParsedUbootEnv {
  const head = headerSize(opts.redundant);
  if (buf.length <= head) throw new EdgekitError(`U-Boot environment: ${buf.length} bytes is too short`);
  const stored = buf.readUInt32LE(0);
  const actual = crc32(buf.subarray(head));
  if (stored !== actual) {
    throw new EdgekitError(`U-Boot environment: CRC mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})`);
  }
  const vars: Record<string, string> = {};
  let pos = head;
  while (pos < buf.length && buf[pos] !== 0) {
    let end = buf.indexOf(0, pos);
    if (end < 0) end = buf.length;
    const entry = buf.subarray(pos, end).toString('utf8');
    const eq = entry.indexOf('=');
    if (eq > 0) vars[entry.slice(0, eq)] = entry.slice(eq + 1);
    pos = end + 1;
  }
  return opts.redundant ? { vars, flags: buf[4] } : { vars };
}

function hex32(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}

// include/image.h
const IH_MAGIC = 0x27051956;
const IH_OS_LINUX = 5;
const IH_TYPE_SCRIPT = 6;
const IH_COMP_NONE = 0;
const IH_ARCH: Record<UbootArch, number> = { arm: 2, arm64: 22, x86_64: 24, riscv: 26 };
const IH_NMLEN = 32;
const HEADER_SIZE = 64;

export type UbootArch = 'arm' | 'arm64' | 'x86_64' | 'riscv';

export interface UbootScriptOptions {
  /** Image name shown by `iminfo`/`mkimage -l` (at most 31 bytes). */
  name?: string;
  arch?: UbootArch;
  /** Header timestamp in seconds: SOURCE_DATE_EPOCH, so the image is reproducible. */
  timestamp?: number;
}

/** Wrap a U-Boot (hush) script in a legacy `script` image, as `mkimage -A arm64 -T script -C none` does. */
export function buildUbootScript(text: string, opts: UbootScriptOptions = {}): Buffer {
  const script = Buffer.from(text, 'utf8');
  const name = Buffer.from(opts.name ?? 'boot script', 'utf8');
  if (name.length >= IH_NMLEN) throw new EdgekitError(`U-Boot script: name longer than ${IH_NMLEN - 1} bytes`);
  const body = Buffer.alloc(8 + script.length);
  body.writeUInt32BE(script.length, 0); // sub-image size table: one entry, then the 0 terminator
  script.copy(body, 8);

  const header = Buffer.alloc(HEADER_SIZE, 0);
  header.writeUInt32BE(IH_MAGIC, 0);
  header.writeUInt32BE((opts.timestamp ?? 0) >>> 0, 8);
  header.writeUInt32BE(body.length, 12);
  header.writeUInt32BE(0, 16); // load address: unused for scripts
  header.writeUInt32BE(0, 20); // entry point: unused for scripts
  header.writeUInt32BE(crc32(body), 24);
  header[28] = IH_OS_LINUX;
  header[29] = IH_ARCH[opts.arch ?? 'arm64'];
  header[30] = IH_TYPE_SCRIPT;
  header[31] = IH_COMP_NONE;
  name.copy(header, 32);
  header.writeUInt32BE(crc32(header), 4); // header CRC is computed with its own field zero
  return Buffer.concat([header, body]);
}

/** The script text inside a legacy script image; throws when it is not one or a CRC is wrong. */
export function parseUbootScript(img: Buffer): string {
  if (img.length < HEADER_SIZE + 8 || img.readUInt32BE(0) !== IH_MAGIC) throw new EdgekitError('U-Boot script: bad magic');
  const header = Buffer.from(img.subarray(0, HEADER_SIZE));
  const hcrc = header.readUInt32BE(4);
  header.writeUInt32BE(0, 4);
  if (crc32(header) !== hcrc) throw new EdgekitError('U-Boot script: header CRC mismatch');
  if (header[30] !== IH_TYPE_SCRIPT) throw new EdgekitError('U-Boot script: not a script image');
  const size = header.readUInt32BE(12);
  const body = img.subarray(HEADER_SIZE, HEADER_SIZE + size);
  if (body.length !== size || crc32(body) !== header.readUInt32BE(24)) throw new EdgekitError('U-Boot script: data CRC mismatch');
  const len = body.readUInt32BE(0);
  return body.subarray(8, 8 + len).toString('utf8');
}
