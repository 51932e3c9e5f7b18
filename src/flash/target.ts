/**
 * One target being written: a block device or a regular file. Writes bypass the page cache
 * (O_DIRECT) where the target allows it, so a failing card reports the failing write, with its
 * offset, instead of a later flush with none, and the progress shown is what reached the device.
 * Where O_DIRECT is refused (tmpfs, some FUSE filesystems) writes go through the cache and the
 * target says so in its notes.
 */
import { constants } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';
import { alignUp } from './aligned.js';

/** Linux's O_DIRECT needs lengths in whole logical blocks; 512 is the smallest any disk has. */
const SECTOR = 512;

export class FlashTarget {
  failure?: string;
  bytesWritten = 0;
  readonly notes: string[] = [];
  private padded = false;

  private constructor(
    readonly path: string,
    readonly kind: 'file' | 'device',
    private fh: FileHandle,
    readonly direct: boolean,
    private imageSize: number,
  ) {}

  /** Opens `path` for writing an image of `imageSize` bytes; a file is emptied and sized to the image. */
  static async open(path: string, imageSize: number): Promise<FlashTarget> {
    const info = await stat(path).catch(() => undefined);
    const kind = info && !info.isFile() ? 'device' : 'file';
    if (info && !info.isFile() && !info.isBlockDevice()) throw new EdgekitError(`${path}: not a regular file or a block device`);
    // O_EXCL on a block device fails when anything has it mounted or claimed: one more guard.
    const base = kind === 'device' ? constants.O_RDWR | constants.O_EXCL : constants.O_RDWR | constants.O_CREAT;
    const tryOpen = (flags: number) => open(path, flags, 0o644);
    let fh: FileHandle;
    let direct = true;
    try {
      fh = await tryOpen(base | constants.O_DIRECT);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EINVAL') throw openError(path, err);
      direct = false;
      fh = await tryOpen(base).catch((e) => {
        throw openError(path, e);
      });
    }
    const t = new FlashTarget(path, kind, fh, direct, imageSize);
    if (!direct) t.notes.push(`${path}: O_DIRECT refused by its filesystem: writes go through the page cache`);
    if (kind === 'file') {
      // Unmapped blocks must read as zeros: an emptied file of the image's size is all holes.
      await fh.truncate(0);
      await fh.truncate(imageSize);
    }
    return t;
  }

  get ok(): boolean {
    return this.failure === undefined;
  }

  /** Writes `len` bytes of `buf` from `offset` at `position`; a failure marks the target failed (never throws). */
  async write(buf: Buffer, offset: number, len: number, position: number): Promise<void> {
    if (this.failure) return;
    let n = len;
    if (this.direct && len % SECTOR !== 0) {
      // Only the image's last block can be partial: pad it with zeros (the buffer has the room)
      // and cut a file back to the image's size when done.
      n = alignUp(len, SECTOR);
      buf.fill(0, offset + len, offset + n);
      this.padded = true;
    }
    let done = 0;
    try {
      while (done < n) {
        const { bytesWritten } = await this.fh.write(buf, offset + done, n - done, position + done);
        if (bytesWritten === 0) throw Object.assign(new Error('no progress'), { code: 'ENOSPC' });
        done += bytesWritten;
      }
      this.bytesWritten += len;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      this.failure = `${this.path}: write failed in bytes ${position + done}-${position + n - 1}: ${code}${hint(code)}`;
    }
  }

  /** Flushes everything to the device; a failed flush marks the target failed. */
  async finish(): Promise<void> {
    try {
      if (this.ok && this.padded && this.kind === 'file') await this.fh.truncate(this.imageSize);
      if (this.ok) await this.fh.datasync();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      this.failure = `${this.path}: flushing the written data failed: ${code}${hint(code)}`;
    } finally {
      await this.fh.close().catch(() => {});
    }
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

function hint(code: string): string {
  if (code === 'EIO') return ' (the card or drive reported an I/O error: it may be worn out)';
  if (code === 'ENOSPC') return ' (no space left: the target is smaller than the image)';
  return '';
}

function openError(path: string, err: unknown): EdgekitError {
  const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  const why =
    code === 'EROFS' || code === 'EACCES' || code === 'EPERM'
      ? ' (read-only or write-protected)'
      : code === 'EBUSY'
        ? ' (in use: mounted or opened by another program)'
        : '';
  return new EdgekitError(`${path}: cannot open for writing: ${code}${why}`);
}
