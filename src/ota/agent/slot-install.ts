/**
 * Writing the inactive slot. A full payload streams from the server straight into the slot through
 * O3's writeSlot (which checks the sha256, reads the slot back and checks its dm-verity tree); the
 * slot is flushed every few MiB and the flushed length recorded, so after a dropped link or a power
 * cut the download resumes from there: the bytes already in the slot are read back (not fetched
 * again) so the whole payload is still hashed end to end. A delta is downloaded to /data (resumable
 * too) and rebuilt into the slot by O2's applyDelta, then checked the same way.
 */
import type { BlockDevice } from '../slots/block-device.js';
import { sha256OfDevice, writeSlot, type ExpectedPayload } from '../slots/write-slot.js';
import { verifyVerityOnDevice } from '../slots/verity-check.js';
import { applyDelta } from '../delta/index.js';
import { EdgekitError } from '../../util/errors.js';

/** Flush the slot and record progress at least this often while writing. */
export const FLUSH_EVERY = 4 << 20;
const READ_CHUNK = 1 << 20;

/**
 * `dev` as writeSlot sees it: writes below `present` are dropped (those bytes are on the slot
 * already, flushed by an earlier run), and every FLUSH_EVERY bytes the slot is flushed and
 * `onFlushed(length)` called.
 */
export function resumingDevice(dev: BlockDevice, present: number, onFlushed: (length: number) => Promise<void>): BlockDevice {
  let end = present;
  let flushedAt = present;
  return {
    name: dev.name,
    size: dev.size,
    read: (buf, pos) => dev.read(buf, pos),
    async write(buf, pos) {
      const skip = Math.max(0, Math.min(buf.length, present - pos));
      if (skip < buf.length) await dev.write(skip ? buf.subarray(skip) : buf, pos + skip);
      end = Math.max(end, pos + buf.length);
      if (end - flushedAt >= FLUSH_EVERY) {
        await dev.sync();
        flushedAt = end;
        await onFlushed(end);
      }
    },
    sync: () => dev.sync(),
  };
}

/** The first `length` bytes of the slot, then `rest`. */
async function* slotPrefixThen(dev: BlockDevice, length: number, rest: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for (let pos = 0; pos < length; pos += READ_CHUNK) {
    const buf = Buffer.alloc(Math.min(READ_CHUNK, length - pos));
    await dev.read(buf, pos);
    yield buf;
  }
  yield* rest;
}

export interface FullWrite {
  slot: BlockDevice;
  expected: ExpectedPayload;
  /** Bytes of this payload already flushed to the slot by an earlier run. */
  present: number;
  /** The payload from byte `present` on. */
  download: (from: number) => AsyncIterable<Buffer>;
  onFlushed: (length: number) => Promise<void>;
}

export async function writeFullPayload(w: FullWrite): Promise<void> {
  const present = Math.min(w.present, w.expected.size);
  const target = resumingDevice(w.slot, present, w.onFlushed);
  await writeSlot(target, slotPrefixThen(w.slot, present, w.download(present)), w.expected);
}

export interface DeltaWrite {
  deltaFile: string;
  /** Device or file paths of the running slot (read) and the inactive slot (written). */
  activePath: string;
  slotPath: string;
  slot: BlockDevice;
  expected: ExpectedPayload;
}

export async function writeFromDelta(w: DeltaWrite): Promise<void> {
  await applyDelta({ delta: w.deltaFile, activePayload: w.activePath, out: w.slotPath, expectedSha256: w.expected.sha256, expectedSize: w.expected.size });
  await checkSlot(w.slot, w.expected);
}

/** The end-to-end check of a written slot: what the next boot will read. */
export async function checkSlot(slot: BlockDevice, expected: ExpectedPayload): Promise<void> {
  const got = await sha256OfDevice(slot, expected.size);
  if (got !== expected.sha256) throw new EdgekitError(`${slot.name}: the slot's sha256 is ${got}, the release says ${expected.sha256}`);
  if (expected.verity) {
    const v = await verifyVerityOnDevice(slot, expected.verity);
    if (!v.ok) throw new EdgekitError(`${slot.name}: dm-verity check of the written slot failed: ${v.problem}`);
  }
}
