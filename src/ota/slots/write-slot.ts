/**
 * Writes a slot's payload to its partition while it streams in (no temporary copy), flushes it,
 * then reads it back and checks it end to end before anything may boot it.
 */
import { createHash } from 'node:crypto';
import type { BlockDevice } from '../../fs/fat-edit.js';
import type { VerityParams } from '../../fs/verity.js';
import { EdgekitError } from '../../util/errors.js';
import { verifyVerityOnDevice } from './verity-check.js';

export interface ExpectedPayload {
  sha256: string;
  size: number;
  /** Also check the dm-verity tree against its root hash (what the boot will check). */
  verity?: VerityParams;
}

/** Bytes buffered before a write: large writes, bounded memory. */
const WRITE_CHUNK = 1 << 20;

export async function writeSlot(target: BlockDevice, source: AsyncIterable<Buffer | Uint8Array>, expected: ExpectedPayload): Promise<void> {
  if (expected.size > target.size) {
    throw new EdgekitError(`${target.name}: the payload is ${expected.size} bytes, the slot partition holds ${target.size}`);
  }
  const hash = createHash('sha256');
  let pos = 0;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (!pendingBytes) return;
    const buf = Buffer.concat(pending, pendingBytes);
    await target.write(buf, pos);
    pos += buf.length;
    pending = [];
    pendingBytes = 0;
  };
  for await (const chunk of source) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk);
    if (pos + pendingBytes + buf.length > expected.size) {
      throw new EdgekitError(`${target.name}: the payload is longer than the expected ${expected.size} bytes`);
    }
    hash.update(buf);
    pending.push(buf);
    pendingBytes += buf.length;
    if (pendingBytes >= WRITE_CHUNK) await flush();
  }
  await flush();
  if (pos !== expected.size) throw new EdgekitError(`${target.name}: the payload ended after ${pos} of ${expected.size} bytes`);
  const streamed = hash.digest('hex');
  if (streamed !== expected.sha256) throw new EdgekitError(`${target.name}: the payload's sha256 is ${streamed}, expected ${expected.sha256}`);
  await target.sync();

  const readBack = await sha256OfDevice(target, expected.size);
  if (readBack !== expected.sha256) throw new EdgekitError(`${target.name}: read back after writing, the slot's sha256 is ${readBack}, expected ${expected.sha256}`);
  if (expected.verity) {
    const check = await verifyVerityOnDevice(target, expected.verity);
    if (!check.ok) throw new EdgekitError(`${target.name}: dm-verity check of the written slot failed: ${check.problem}`);
  }
}

export async function sha256OfDevice(dev: BlockDevice, size: number): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.alloc(Math.min(WRITE_CHUNK, size));
  for (let pos = 0; pos < size; pos += buf.length) {
    const piece = buf.subarray(0, Math.min(buf.length, size - pos));
    await dev.read(piece, pos);
    hash.update(piece);
  }
  return hash.digest('hex');
}
