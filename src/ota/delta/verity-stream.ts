/**
 * The dm-verity hash tree (sha256, 4 KiB blocks, format 1), computed from data as it streams past:
 * the same bytes src/fs/verity.ts appends after a payload, without reading the payload back (the
 * device writes its inactive slot front to back and never rereads it). Memory: 32 bytes per 4 KiB
 * of data, about 300 KiB for a 36 MB root.
 */
import * as nodeCrypto from 'node:crypto';

const BLOCK = 4096;
const DIGEST = 32;

/**
 * crypto.hash (Node >= 20.12; Debian trixie's nodejs has it): a one-shot digest with no Hash
 * object, which at one per 4 KiB (16,000 for a 62 MB root) was a visible share of applying a delta.
 */
const oneShot = (nodeCrypto as { hash?: (algorithm: string, data: Uint8Array, encoding: 'buffer') => Buffer }).hash;

export class VerityHasher {
  private readonly digests: Buffer[] = [];
  private partial = Buffer.alloc(BLOCK);
  private partialLength = 0;
  /** The salt, then room for one block: what one-shot hashing digests. */
  private readonly staged: Buffer;
  bytes = 0;

  constructor(private readonly salt: Buffer) {
    this.staged = Buffer.alloc(salt.length + BLOCK);
    salt.copy(this.staged);
  }

  /** The digest of salt + the 4 KiB of `src` at `at`. */
  private hashBlock(src: Buffer, at: number): Buffer {
    if (!oneShot) return nodeCrypto.createHash('sha256').update(this.salt).update(src.subarray(at, at + BLOCK)).digest();
    src.copy(this.staged, this.salt.length, at, at + BLOCK);
    return oneShot('sha256', this.staged, 'buffer');
  }


  update(data: Buffer): void {
    this.bytes += data.length;
    let at = 0;
    if (this.partialLength > 0) {
      const n = Math.min(BLOCK - this.partialLength, data.length);
      data.copy(this.partial, this.partialLength, 0, n);
      this.partialLength += n;
      at = n;
      if (this.partialLength === BLOCK) {
        this.digests.push(this.hashBlock(this.partial, 0));
        this.partialLength = 0;
      }
    }
    for (; at + BLOCK <= data.length; at += BLOCK) this.digests.push(this.hashBlock(data, at));
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
      for (let i = 0; i < packed.length / BLOCK; i++) next.push(this.hashBlock(packed, i * BLOCK));
      digests = next;
      if (next.length === 1) return { tree: Buffer.concat(levels.reverse()), rootHash: next[0].toString('hex') };
    }
  }
}
