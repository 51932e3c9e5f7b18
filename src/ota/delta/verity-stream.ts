/**
 * The dm-verity hash tree (sha256, 4 KiB blocks, format 1), computed from data as it streams past:
 * the same bytes src/fs/verity.ts appends after a payload, without reading the payload back (the
 * device writes its inactive slot front to back and never rereads it). Memory: 32 bytes per 4 KiB
 * of data, about 300 KiB for a 36 MB root.
 */
import { createHash } from 'node:crypto';

const BLOCK = 4096;
const DIGEST = 32;

function hashBlock(salt: Buffer, block: Buffer): Buffer {
  return createHash('sha256').update(salt).update(block).digest();
}

export class VerityHasher {
  private readonly digests: Buffer[] = [];
  private partial = Buffer.alloc(BLOCK);
  private partialLength = 0;
  bytes = 0;

  constructor(private readonly salt: Buffer) {}

  update(data: Buffer): void {
    this.bytes += data.length;
    let at = 0;
    if (this.partialLength > 0) {
      const n = Math.min(BLOCK - this.partialLength, data.length);
      data.copy(this.partial, this.partialLength, 0, n);
      this.partialLength += n;
      at = n;
      if (this.partialLength === BLOCK) {
        this.digests.push(hashBlock(this.salt, this.partial));
        this.partialLength = 0;
      }
    }
    for (; at + BLOCK <= data.length; at += BLOCK) this.digests.push(hashBlock(this.salt, data.subarray(at, at + BLOCK)));
    if (at < data.length) {
      data.copy(this.partial, 0, at);
      this.partialLength = data.length - at;
    }
  }

  /** The hash tree as stored (top level first), and the root hash. Data must end on a 4 KiB boundary. */
  finish(): { tree: Buffer; rootHash: string } {
    if (this.partialLength !== 0) throw new Error('verity: data does not end on a 4 KiB boundary');
    let digests = this.digests;
    if (digests.length === 1) return { tree: Buffer.alloc(0), rootHash: digests[0].toString('hex') };
    const levels: Buffer[] = [];
    for (;;) {
      const perBlock = BLOCK / DIGEST;
      const packed = Buffer.alloc(Math.ceil(digests.length / perBlock) * BLOCK);
      digests.forEach((d, i) => d.copy(packed, i * DIGEST));
      levels.push(packed);
      const next: Buffer[] = [];
      for (let i = 0; i < packed.length / BLOCK; i++) next.push(hashBlock(this.salt, packed.subarray(i * BLOCK, (i + 1) * BLOCK)));
      digests = next;
      if (next.length === 1) return { tree: Buffer.concat(levels.reverse()), rootHash: next[0].toString('hex') };
    }
  }
}
