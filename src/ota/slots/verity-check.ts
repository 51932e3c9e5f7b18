/**
 * dm-verity's check of a slot through a BlockDevice (src/fs/verity.ts checks files): every data
 * block against level 0, each hash level against the one above, the top block against the root.
 * It is what the kernel would find reading the whole slot, done before the slot may boot.
 */
import { createHash } from 'node:crypto';
import type { BlockDevice } from '../../fs/fat-edit.js';
import { levelSizes, type VerityCheck, type VerityParams } from '../../fs/verity.js';

const BLOCK = 4096;
const DIGEST = 32;

export async function verifyVerityOnDevice(dev: BlockDevice, p: VerityParams): Promise<VerityCheck> {
  const salt = Buffer.from(p.salt, 'hex');
  const sizes = levelSizes(p.dataBlocks);
  const treeBytes = sizes.reduce((a, b) => a + b, 0) * BLOCK;
  if (p.hashOffset + treeBytes > dev.size || p.dataBlocks * BLOCK > dev.size) return { ok: false, problem: `${dev.name} is too small for the hash tree` };
  const hash = (b: Buffer) => createHash('sha256').update(salt).update(b).digest();
  const stored: Buffer[] = [];
  let pos = p.hashOffset;
  for (let level = sizes.length - 1; level >= 0; level--) {
    stored[level] = Buffer.alloc(sizes[level] * BLOCK);
    await dev.read(stored[level], pos);
    pos += stored[level].length;
  }
  const root = Buffer.from(p.rootHash, 'hex');
  if (sizes.length === 0) {
    const block = Buffer.alloc(BLOCK);
    await dev.read(block, 0);
    return hash(block).equals(root) ? { ok: true } : { ok: false, problem: 'data block 0 does not match the root hash', dataBlock: 0 };
  }
  if (!hash(stored[sizes.length - 1]).equals(root)) return { ok: false, problem: 'top hash block does not match the root hash', level: sizes.length - 1 };
  for (let level = sizes.length - 1; level > 0; level--) {
    for (let i = 0; i < sizes[level - 1]; i++) {
      const d = hash(stored[level - 1].subarray(i * BLOCK, (i + 1) * BLOCK));
      if (!d.equals(stored[level].subarray(i * DIGEST, (i + 1) * DIGEST))) return { ok: false, problem: `hash block ${i} of level ${level - 1} is corrupt`, level: level - 1, hashBlock: i };
    }
  }
  const chunkBlocks = 256;
  const buf = Buffer.alloc(chunkBlocks * BLOCK);
  for (let b = 0; b < p.dataBlocks; b += chunkBlocks) {
    const n = Math.min(chunkBlocks, p.dataBlocks - b);
    const piece = buf.subarray(0, n * BLOCK);
    await dev.read(piece, b * BLOCK);
    for (let i = 0; i < n; i++) {
      if (!hash(piece.subarray(i * BLOCK, (i + 1) * BLOCK)).equals(stored[0].subarray((b + i) * DIGEST, (b + i + 1) * DIGEST))) {
        return { ok: false, problem: `data block ${b + i} (byte ${(b + i) * BLOCK}) does not match its hash`, dataBlock: b + i };
      }
    }
  }
  return { ok: true };
}
