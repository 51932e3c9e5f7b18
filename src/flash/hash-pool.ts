/**
 * sha256 on worker threads, so that hashing runs beside the reads and writes instead of between
 * them. Measured with `node --cpu-prof` on a 340 MiB flash, hashing took 224 ms of the main
 * thread's 430 busy ms, serialised with queueing the next read and write.
 *
 * A chain is one sha256 (a signed region, a block-map range, a read-back range); it lives on one
 * worker, which hashes its updates in the order they were sent. Data is not copied: it lies in
 * shared aligned memory (src/flash/aligned.ts) that each worker maps once; `update` resolves when
 * the worker is done with the bytes, so the buffer can be reused.
 *
 * How many workers: a worker costs 30-40 ms of CPU to start (a Node environment of its own), and
 * an image is hashed in image order, so one region's chain is fed at a time: one worker does
 * nearly all the hashing of a write. Another starts only for a large chain while every worker
 * has a large chain open (several targets' read-backs at once), up to one per core. The first one
 * is started as early as the caller can (the CLI does it before reading the key and the block map).
 *
 * A small chain (up to SMALL_CHAIN bytes) that starts before any worker is up is hashed on the
 * main thread: the first regions of an image (partition table, boot partition) are done while the
 * worker boots. A large one waits in the queue of the worker that is starting, while the writes
 * go on: hashed on the main thread it would hold the reads and writes back for its whole length.
 */
import { createHash, type Hash } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { HashReply, HashRequest } from './hash-worker.js';

/** About as much as one core hashes while a worker starts (2 GB/s for 30-40 ms). */
const SMALL_CHAIN = 64 << 20;
/** Past the cores there is nothing to gain; each worker is a V8 isolate. */
const MAX_WORKERS = 4;

export class HashPool {
  private workers: HashWorker[] = [new HashWorker()];
  private memoryIds = new WeakMap<SharedArrayBuffer, number>();
  private nextMemory = 0;
  private nextChain = 0;

  constructor(private readonly maxWorkers = Math.max(1, Math.min(MAX_WORKERS, availableParallelism()))) {}

  /**
   * A new sha256 of about `bytes` bytes. A small one: on the main thread while no worker is up,
   * else on the worker with the least queued. A large one: on a worker that has no other large
   * chain open (one that is up first), else on a new worker if there is room, else on the one with
   * the fewest: a busy worker soon done with a small chain is better than starting another.
   */
  chain(bytes: number): HashChain {
    if (bytes <= SMALL_CHAIN) {
      const up = this.workers.filter((w) => w.online);
      if (!up.length) return new MainThreadChain();
      return new WorkerChain(this, up.reduce((a, b) => (b.queued < a.queued ? b : a)), this.nextChain++, false);
    }
    let w = [...this.workers].sort((a, b) => a.largeChains - b.largeChains || Number(b.online) - Number(a.online))[0];
    if (w.largeChains > 0 && this.workers.length < this.maxWorkers) this.workers.push((w = new HashWorker()));
    return new WorkerChain(this, w, this.nextChain++, true);
  }

  /** Workers started so far (up or starting). */
  get size(): number {
    return this.workers.length;
  }

  /** Resolves when a worker is up (chains made from then on are hashed off the main thread). */
  ready(): Promise<void> {
    return Promise.race(this.workers.map((w) => w.started));
  }

  /** The id workers know `memory` by. */
  memoryId(memory: SharedArrayBuffer): number {
    let id = this.memoryIds.get(memory);
    if (id === undefined) this.memoryIds.set(memory, (id = this.nextMemory++));
    return id;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.close()));
  }
}

/** One sha256 being computed, on a worker or on the main thread. */
export interface HashChain {
  /** Hashes `data` next; resolves when `data` is no longer needed (at once on the main thread). */
  update(data: Buffer): Promise<void>;
  /** Hashes `length` zero bytes next (unwritten parts of a signed region). */
  zeros(length: number): Promise<void>;
  /** The hex sha256 of everything sent before. */
  digest(): Promise<string>;
}

const ZEROS = Buffer.alloc(1 << 20);

class MainThreadChain implements HashChain {
  private hash: Hash = createHash('sha256');

  async update(data: Buffer): Promise<void> {
    this.hash.update(data);
  }

  async zeros(length: number): Promise<void> {
    for (let n = length; n > 0; n -= ZEROS.length) this.hash.update(ZEROS.subarray(0, Math.min(n, ZEROS.length)));
  }

  async digest(): Promise<string> {
    return this.hash.digest('hex');
  }
}

class WorkerChain implements HashChain {
  constructor(
    private pool: HashPool,
    private worker: HashWorker,
    private id: number,
    private large: boolean,
  ) {
    if (large) worker.largeChains++;
  }

  update(data: Buffer): Promise<void> {
    if (data.length === 0) return Promise.resolve();
    const len = data.length;
    if (data.buffer instanceof SharedArrayBuffer) {
      const memory = this.pool.memoryId(data.buffer);
      this.worker.share(memory, data.buffer);
      return this.worker.call({ op: 'update', chain: this.id, memory, offset: data.byteOffset, length: len }, len).then(() => {});
    }
    // Not in shared memory: the bytes are copied into the message (small pieces only).
    return this.worker.call({ op: 'bytes', chain: this.id, bytes: new Uint8Array(data) }, len).then(() => {});
  }

  zeros(length: number): Promise<void> {
    if (length <= 0) return Promise.resolve();
    return this.worker.call({ op: 'zeros', chain: this.id, length }, length).then(() => {});
  }

  async digest(): Promise<string> {
    if (this.large) this.worker.largeChains--;
    this.large = false;
    return (await this.worker.call({ op: 'digest', chain: this.id }, 0))!;
  }
}

type Call = { resolve: (digest: string | undefined) => void; reject: (err: Error) => void; bytes: number };
type WithoutTicket<T> = T extends unknown ? Omit<T, 'ticket'> : never;

class HashWorker {
  /** Bytes sent and not yet hashed: how busy this worker is. */
  queued = 0;
  /** Chains over SMALL_CHAIN bytes sent here and not yet finished: how much work is still coming. */
  largeChains = 0;
  online = false;
  readonly started: Promise<void>;
  private worker: Worker;
  private calls = new Map<number, Call>();
  private nextTicket = 0;
  private shared = new Set<number>();
  private failed?: Error;

  constructor() {
    this.worker = new Worker(new URL('./hash-worker.js', import.meta.url));
    this.started = new Promise((resolve, reject) => {
      this.worker.once('online', () => {
        this.online = true;
        resolve();
      });
      this.worker.once('error', reject);
    });
    this.started.catch(() => {}); // a worker that fails to start fails its calls instead
    this.worker.on('message', (r: HashReply) => {
      const call = this.calls.get(r.ticket)!;
      this.calls.delete(r.ticket);
      this.queued -= call.bytes;
      if ('error' in r) call.reject(new Error(`hashing failed: ${r.error}`));
      else call.resolve(r.digest);
    });
    const fail = (err: Error) => {
      this.failed ??= err;
      for (const c of this.calls.values()) c.reject(this.failed);
      this.calls.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', (code) => fail(new Error(`hashing worker exited (${code})`)));
  }

  share(id: number, memory: SharedArrayBuffer): void {
    if (this.shared.has(id)) return;
    this.shared.add(id);
    this.worker.postMessage({ op: 'memory', id, memory } satisfies HashRequest);
  }

  call(req: WithoutTicket<HashRequest>, bytes: number): Promise<string | undefined> {
    if (this.failed) return Promise.reject(this.failed);
    const ticket = this.nextTicket++;
    this.queued += bytes;
    return new Promise((resolve, reject) => {
      this.calls.set(ticket, { resolve, reject, bytes });
      this.worker.postMessage({ ...req, ticket } as HashRequest);
    });
  }

  async close(): Promise<void> {
    this.failed ??= new Error('hashing workers closed');
    await this.worker.terminate();
  }
}
