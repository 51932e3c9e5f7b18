/**
 * A disk with a volatile write cache, for power-cut tests. Writes land in a cache that reads see at
 * once (as the page cache makes them visible); only sync() makes them durable in the backing image
 * file. At a power cut every write not yet synced is torn into sectors, and each sector is kept or
 * lost at random and the kept ones land in random order (seeded): a missing fsync loses data or
 * lets a later write land before an earlier one, so tests that cut at every step find it. One
 * sector is the unit the device writes whole (the atomicity every FAT argument rests on).
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { BlockDevice } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { Rng } from './rng.js';

export const SIM_SECTOR = 512;

/** Thrown by every operation from the moment the power goes until the device is powered again. */
export class PowerCut extends Error {
  constructor(readonly op: number) {
    super(`simulated power cut at disk operation ${op}`);
    this.name = 'PowerCut';
  }
}

export interface SimDiskOptions {
  /** Seeds the choice of which unsynced sectors survive a cut. */
  seed: number;
  /** Writes that reach past this byte are refused (a device that is full or smaller than it claims). */
  writeLimit?: number;
  /** A disk that acknowledges flushes without doing them: for tests proving that cuts catch a missing fsync. */
  lyingSync?: boolean;
}

interface PendingWrite {
  position: number;
  data: Buffer;
}

export class SimDisk implements BlockDevice {
  /** Writes and syncs so far: a fault schedule names the operation at which the power goes. */
  ops = 0;
  cuts = 0;
  private pending: PendingWrite[] = [];
  /** Operation numbers at which the power goes, ascending. */
  private cutAt: number[] = [];
  private down = false;
  private readonly rng: Rng;

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly size: number,
    private readonly opts: SimDiskOptions,
  ) {
    this.rng = new Rng(opts.seed);
  }

  get name(): string {
    return `simulated disk ${this.path}`;
  }

  /** The image file is the disk's durable content; it is changed only by sync() and cuts. */
  static async open(path: string, opts: SimDiskOptions): Promise<SimDisk> {
    const fh = await open(path, 'r+');
    return new SimDisk(fh, path, (await fh.stat()).size, opts);
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** The power goes when the disk operation numbered `op` (counted from now: 1 = the next) starts. */
  cutAfter(op: number): void {
    this.scheduleCuts([this.ops + op]);
  }

  /** Power cuts at these operation numbers (counted since the disk was opened), kept across cuts. */
  scheduleCuts(ops: number[]): void {
    this.cutAt = [...this.cutAt, ...ops].sort((a, b) => a - b);
  }

  /** The power goes now: this and every later operation throws PowerCut until powerCut(). */
  cutNow(): never {
    this.down = true;
    throw new PowerCut(this.ops);
  }

  cancelCuts(): void {
    this.cutAt = [];
  }

  get unsyncedWrites(): number {
    return this.pending.length;
  }

  async read(buf: Buffer, position: number): Promise<void> {
    if (this.down) throw new PowerCut(this.ops);
    this.bounds(buf.length, position);
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.fh.read(buf, done, buf.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    buf.fill(0, done);
    for (const w of this.pending) {
      const from = Math.max(position, w.position);
      const to = Math.min(position + buf.length, w.position + w.data.length);
      if (from < to) w.data.copy(buf, from - position, from - w.position, to - w.position);
    }
  }

  async write(buf: Buffer, position: number): Promise<void> {
    this.tick();
    this.bounds(buf.length, position);
    if (this.opts.writeLimit !== undefined && position + buf.length > this.opts.writeLimit) {
      throw new EdgekitError(`${this.name}: no space left on device (writes past byte ${this.opts.writeLimit} are refused)`);
    }
    this.pending.push({ position, data: Buffer.from(buf) });
  }

  async sync(): Promise<void> {
    this.tick();
    if (this.opts.lyingSync) return;
    for (const w of this.pending) await this.persist(w.data, w.position);
    this.pending = [];
  }

  /**
   * Cuts the power now (if a scheduled cut has not already): unsynced sectors survive or not at
   * random, in random order. The disk is then powered again and accepts I/O.
   */
  async powerCut(): Promise<{ kept: number; lost: number }> {
    const sectors: PendingWrite[] = [];
    for (const w of this.pending) {
      for (let o = 0; o < w.data.length; o += SIM_SECTOR) {
        sectors.push({ position: w.position + o, data: w.data.subarray(o, Math.min(o + SIM_SECTOR, w.data.length)) });
      }
    }
    let kept = 0;
    for (const s of this.rng.shuffle(sectors)) {
      if (!this.rng.chance(0.5)) continue;
      await this.persist(s.data, s.position);
      kept++;
    }
    this.pending = [];
    this.down = false;
    this.cuts++;
    return { kept, lost: sectors.length - kept };
  }

  /** A clean shutdown: the kernel writes back its caches before the reset. */
  async shutdown(): Promise<void> {
    if (this.down) throw new PowerCut(this.ops);
    for (const w of this.pending) await this.persist(w.data, w.position);
    this.pending = [];
  }

  get isDown(): boolean {
    return this.down;
  }

  private tick(): void {
    if (this.down) throw new PowerCut(this.ops);
    this.ops++;
    if (this.cutAt.length && this.ops >= this.cutAt[0]) {
      while (this.cutAt.length && this.cutAt[0] <= this.ops) this.cutAt.shift();
      this.down = true;
      throw new PowerCut(this.ops);
    }
  }

  private bounds(len: number, position: number): void {
    if (position < 0 || position + len > this.size) throw new EdgekitError(`${this.name}: ${len} bytes at ${position} are past the end (${this.size} bytes)`);
  }

  private async persist(data: Buffer, position: number): Promise<void> {
    let done = 0;
    while (done < data.length) done += (await this.fh.write(data, done, data.length - done, position + done)).bytesWritten;
  }
}
