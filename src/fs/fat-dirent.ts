/** FAT 32-byte short directory entries and the DOS date/time format they carry. */

export const ATTR_READ_ONLY = 0x01;
export const ATTR_HIDDEN = 0x02;
export const ATTR_SYSTEM = 0x04;
export const ATTR_VOLUME_ID = 0x08;
export const ATTR_DIRECTORY = 0x10;
export const ATTR_ARCHIVE = 0x20;
export const ATTR_LONG_NAME = 0x0f;
export const DIRENT_SIZE = 32;

export interface DosTimestamp {
  date: number;
  time: number;
}

/**
 * `mtime` (seconds since the epoch) as a DOS date and time in UTC, so the result does not depend
 * on the build machine's time zone. DOS dates cover 1980..2107: outside that, the nearest end.
 */
export function dosTimestamp(mtime: number): DosTimestamp {
  const min = Date.UTC(1980, 0, 1) / 1000;
  const max = Date.UTC(2107, 11, 31, 23, 59, 58) / 1000;
  const d = new Date(Math.min(max, Math.max(min, Math.floor(mtime))) * 1000);
  return {
    date: ((d.getUTCFullYear() - 1980) << 9) | ((d.getUTCMonth() + 1) << 5) | d.getUTCDate(),
    time: (d.getUTCHours() << 11) | (d.getUTCMinutes() << 5) | (d.getUTCSeconds() >> 1),
  };
}

export function shortEntry(f: { name: Buffer; attr: number; cluster: number; size: number; stamp: DosTimestamp }): Buffer {
  const e = Buffer.alloc(DIRENT_SIZE);
  f.name.copy(e, 0, 0, 11);
  e[11] = f.attr;
  e.writeUInt16LE(f.stamp.time, 14); // creation time
  e.writeUInt16LE(f.stamp.date, 16); // creation date
  e.writeUInt16LE(f.stamp.date, 18); // last access date
  e.writeUInt16LE((f.cluster >>> 16) & 0xffff, 20);
  e.writeUInt16LE(f.stamp.time, 22); // write time
  e.writeUInt16LE(f.stamp.date, 24); // write date
  e.writeUInt16LE(f.cluster & 0xffff, 26);
  e.writeUInt32LE(f.size, 28);
  return e;
}
