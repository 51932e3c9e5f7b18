/**
 * FAT directory names: VFAT long names (LFN entries, UTF-16) and the 8.3 short names that go with
 * them, generated as the FAT spec describes (upper-case basis, "~N" numeric tails on loss or
 * collision) so every name in a directory has a unique short alias.
 */
import { EdgekitError } from '../util/errors.js';

/** Characters allowed in a short name besides A-Z and 0-9. */
const SHORT_SPECIALS = "!#$%&'()-@^_`{}~";
const LFN_FORBIDDEN = '"*/:<>?\\|';
export const LFN_CHARS_PER_ENTRY = 13;
export const LFN_MAX_UNITS = 255;

function isShortChar(ch: string): boolean {
  return (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || SHORT_SPECIALS.includes(ch);
}

/** Throws unless `name` can be a FAT long name; `path` names the entry in the error. */
export function checkLongName(name: string, path: string): void {
  if (name.length === 0) throw new EdgekitError(`FAT: empty file name at "${path}"`);
  if (name.length > LFN_MAX_UNITS) throw new EdgekitError(`FAT: name of "${path}" is longer than ${LFN_MAX_UNITS} UTF-16 characters`);
  for (const ch of name) {
    const code = ch.codePointAt(0)!;
    if (code < 0x20 || code === 0x7f || LFN_FORBIDDEN.includes(ch)) {
      throw new EdgekitError(`FAT: "${path}" has a character FAT names cannot hold (${JSON.stringify(ch)})`);
    }
  }
  // Windows and Linux drop trailing dots and spaces when they look a name up.
  if (/[. ]$/.test(name)) throw new EdgekitError(`FAT: "${path}" ends with a dot or space, which FAT readers strip`);
}

/** True when `name` is already a valid upper-case 8.3 name, so it needs no long-name entries. */
export function isExactShortName(name: string): boolean {
  const dot = name.indexOf('.');
  const base = dot < 0 ? name : name.slice(0, dot);
  const ext = dot < 0 ? '' : name.slice(dot + 1);
  if (base.length < 1 || base.length > 8 || ext.length > 3 || (dot >= 0 && ext.length === 0)) return false;
  return [...base, ...ext].every(isShortChar);
}

/** The 11-byte on-disk form of an 8.3 name ("README  TXT"). */
export function packShortName(base: string, ext: string): Buffer {
  return Buffer.from(base.padEnd(8, ' ') + ext.padEnd(3, ' '), 'latin1');
}

/** A long-name fragment in short-name characters, as the spec's basis-name rules make it. */
function toShortChars(s: string): { out: string } {
  let out = '';
  for (const ch of s.toUpperCase()) {
    if (isShortChar(ch)) out += ch;
    else if (ch !== ' ' && ch !== '.') out += '_'; // '+,;=[]' and non-ASCII (per code point)
    // spaces and embedded periods are dropped
  }
  return { out };
}

/**
 * Short names for one directory's entries. Names that are valid 8.3 names once upper-cased keep
 * that as their short name (reserved up front, so no generated alias can take it); the others get
 * a "~N" alias. Entries must be allocated in a fixed order (tree order) so the aliases, and so the
 * image, are the same on every run. Names must already be unique ignoring case.
 */
export class ShortNameAllocator {
  private used = new Set<string>();

  constructor(names: string[]) {
    for (const name of names) {
      const upper = name.toUpperCase();
      if (isExactShortName(upper)) this.used.add(upper);
    }
  }

  /** The 11-byte short name for `name`, and whether long-name entries must accompany it. */
  allocate(name: string): { short: Buffer; needsLfn: boolean } {
    const upper = name.toUpperCase();
    if (isExactShortName(upper)) {
      const dot = upper.indexOf('.');
      const short = packShortName(dot < 0 ? upper : upper.slice(0, dot), dot < 0 ? '' : upper.slice(dot + 1));
      return { short, needsLfn: name !== upper };
    }
    const stripped = name.replace(/^\.+/, '');
    const lastDot = stripped.lastIndexOf('.');
    const base = toShortChars(lastDot < 0 ? stripped : stripped.slice(0, lastDot)).out.slice(0, 8) || '_';
    const ext = toShortChars(lastDot < 0 ? '' : stripped.slice(lastDot + 1)).out.slice(0, 3);
    for (let n = 1; n < 1_000_000; n++) {
      const tail = `~${n}`;
      const candidate = base.slice(0, 8 - tail.length) + tail;
      const key = ext ? `${candidate}.${ext}` : candidate;
      if (!this.used.has(key)) {
        this.used.add(key);
        return { short: packShortName(candidate, ext), needsLfn: true };
      }
    }
    throw new EdgekitError(`FAT: no free short name for "${name}"`);
  }
}

/** The checksum of an 11-byte short name that every LFN entry of that name carries. */
export function shortNameChecksum(short: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = ((((sum & 1) << 7) | (sum >> 1)) + short[i]) & 0xff;
  return sum;
}

/** Offsets of the 13 UTF-16 characters inside an LFN entry. */
export const LFN_CHAR_OFFSETS = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];

/** The LFN entries for `name`, in on-disk order (last fragment first), 32 bytes each. */
export function longNameEntries(name: string, short: Buffer): Buffer[] {
  const units: number[] = [];
  for (let i = 0; i < name.length; i++) units.push(name.charCodeAt(i));
  const count = Math.ceil(units.length / LFN_CHARS_PER_ENTRY);
  if (units.length % LFN_CHARS_PER_ENTRY !== 0) units.push(0x0000); // terminator, then 0xFFFF padding
  while (units.length < count * LFN_CHARS_PER_ENTRY) units.push(0xffff);
  const checksum = shortNameChecksum(short);
  const entries: Buffer[] = [];
  for (let seq = count; seq >= 1; seq--) {
    const e = Buffer.alloc(32);
    e[0] = seq | (seq === count ? 0x40 : 0);
    e[11] = 0x0f; // ATTR_LONG_NAME
    e[13] = checksum;
    LFN_CHAR_OFFSETS.forEach((off, i) => e.writeUInt16LE(units[(seq - 1) * LFN_CHARS_PER_ENTRY + i], off));
    entries.push(e);
  }
  return entries;
}

/** The characters of one long-name directory entry at byte `o` of `raw` (up to the NUL or padding). */
export function lfnChars(raw: Buffer, o: number): string {
  let s = '';
  for (const off of LFN_CHAR_OFFSETS) {
    const u = raw.readUInt16LE(o + off);
    if (u === 0x0000 || u === 0xffff) break;
    s += String.fromCharCode(u);
  }
  return s;
}
