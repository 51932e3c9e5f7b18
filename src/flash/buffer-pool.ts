/**
 * A fixed set of aligned buffers shared by the reader and the writers: the reader waits for a free
 * buffer, which bounds memory and makes a slow target pace the source instead of queueing it.
 */
import { alignedBuffers } from './aligned.js';

export class BufferPool {
  private free: Buffer[];
  private waiters: Array<(b: Buffer) => void> = [];

  constructor(count: number, readonly size: number, opts: { shared?: boolean } = {}) {
    this.free = alignedBuffers(count, size, opts);
  }

  take(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return Promise.resolve(b);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  give(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}
