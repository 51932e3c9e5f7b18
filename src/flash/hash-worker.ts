/**
 * The worker side of src/flash/hash-pool.ts: sha256 chains fed from shared memory. Messages come
 * in the order the main thread sent them, so a chain's updates are hashed in image order. It loads
 * nothing but node:crypto, so it is running within a few milliseconds.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

export type HashRequest =
  | { op: 'memory'; id: number; memory: SharedArrayBuffer }
  | { op: 'update'; ticket: number; chain: number; memory: number; offset: number; length: number }
  | { op: 'bytes'; ticket: number; chain: number; bytes: Uint8Array }
  | { op: 'zeros'; ticket: number; chain: number; length: number }
  | { op: 'digest'; ticket: number; chain: number };

export type HashReply = { ticket: number; digest?: string } | { ticket: number; error: string };

const port = parentPort!;
const memories = new Map<number, SharedArrayBuffer>();
const chains = new Map<number, Hash>();
const ZEROS = new Uint8Array(1 << 20);

const chainOf = (id: number) => {
  let h = chains.get(id);
  if (!h) chains.set(id, (h = createHash('sha256')));
  return h;
};

port.on('message', (m: HashRequest) => {
  if (m.op === 'memory') {
    memories.set(m.id, m.memory);
    return;
  }
  try {
    switch (m.op) {
      case 'update':
        chainOf(m.chain).update(new Uint8Array(memories.get(m.memory)!, m.offset, m.length));
        break;
      case 'bytes':
        chainOf(m.chain).update(m.bytes);
        break;
      case 'zeros': {
        const h = chainOf(m.chain);
        for (let n = m.length; n > 0; n -= ZEROS.length) h.update(ZEROS.subarray(0, Math.min(n, ZEROS.length)));
        break;
      }
      case 'digest': {
        const digest = chainOf(m.chain).digest('hex');
        chains.delete(m.chain);
        port.postMessage({ ticket: m.ticket, digest } satisfies HashReply);
        return;
      }
    }
    port.postMessage({ ticket: m.ticket } satisfies HashReply);
  } catch (err) {
    port.postMessage({ ticket: m.ticket, error: (err as Error).message } satisfies HashReply);
  }
});
