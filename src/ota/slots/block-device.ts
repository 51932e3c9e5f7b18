/**
 * Block devices for the update path: a disk or image file opened for positioned I/O, and a window
 * onto one partition of it. The simulator (src/ota/sim/) provides the same interface with power-cut
 * semantics, so everything that writes a device is exercised against cuts.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { BlockDevice } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';

export type { BlockDevice } from '../../fs/fat-edit.js';

/** A device that can also be closed (files and real block devices). */
export interface OpenBlockDevice extends BlockDevice {
  close(): Promise<void>;
}

/** Opens a disk (/dev/mmcblk0) or an image file read-write; its size is what the kernel reports. */
export async function openBlockDevice(path: string): Promise<OpenBlockDevice> {
  const fh = await open(path, 'r+').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`cannot open ${path} for writing: ${err.code ?? err.message}`);
  });
  // Block devices report size 0 through stat; seeking to the end works for both.
  let size = (await fh.stat()).size;
  if (size === 0) size = await endOffset(fh);
  return {
    name: path,
    size,
    read: (buf, position) => readExact(fh, buf, position, path, size),
    async write(buf, position) {
      if (position < 0 || position + buf.length > size) throw new EdgekitError(`${path}: write of ${buf.length} bytes at ${position} is past the end (${size} bytes)`);
      let done = 0;
      while (done < buf.length) {
        const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
        done += bytesWritten;
      }
    },
    sync: () => fh.sync(),
    close: () => fh.close(),
  };
}

async function endOffset(fh: FileHandle): Promise<number> {
  // Binary search for the last readable byte: works on devices where stat reports 0.
  let lo = 0;
  let hi = 1;
  const one = Buffer.alloc(1);
  while ((await fh.read(one, 0, 1, hi - 1)).bytesRead === 1) hi *= 2;
  while (lo + 1 < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if ((await fh.read(one, 0, 1, mid - 1)).bytesRead === 1) lo = mid;
    else hi = mid;
  }
  return lo;
}

async function readExact(fh: FileHandle, buf: Buffer, position: number, name: string, size: number): Promise<void> {
  if (position < 0 || position + buf.length > size) throw new EdgekitError(`${name}: read of ${buf.length} bytes at ${position} is past the end (${size} bytes)`);
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) throw new EdgekitError(`${name}: ends before byte ${position + buf.length}`);
    done += bytesRead;
  }
}

/** The bytes [offset, offset + size) of `dev` as a device of its own: one partition. */
export function partitionDevice(dev: BlockDevice, offset: number, size: number, name = `${dev.name} at byte ${offset}`): BlockDevice {
  if (offset < 0 || offset + size > dev.size) throw new EdgekitError(`${name}: partition [${offset}, ${offset + size}) is outside ${dev.name} (${dev.size} bytes)`);
  const check = (len: number, pos: number) => {
    if (pos < 0 || pos + len > size) throw new EdgekitError(`${name}: ${len} bytes at ${pos} are outside the ${size}-byte partition`);
  };
  return {
    name,
    size,
    read: (buf, pos) => (check(buf.length, pos), dev.read(buf, offset + pos)),
    write: (buf, pos) => (check(buf.length, pos), dev.write(buf, offset + pos)),
    sync: () => dev.sync(),
  };
}
