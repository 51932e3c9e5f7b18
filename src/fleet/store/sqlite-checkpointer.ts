/**
 * WAL checkpoints of the fleet's SQLite file in a worker thread. A checkpoint copies the pages
 * committed to the WAL into the database file and fsyncs it; run by SQLite on the server's own
 * connection (after a commit, every 1000 pages), that fsync blocks the event loop and every request
 * waits through it: hundreds of milliseconds when the disk is busy (bench/fleet saw one fsync of
 * 200 ms hold all check-ins for 350 ms).
 *
 * The worker opens its own connection and checkpoints every CHECKPOINT_EVERY_MS without blocking
 * the server's writes (PASSIVE). Only a writer can restart the WAL from its beginning, and only once
 * everything in it is copied, so the server's connection keeps SQLite's automatic checkpoint as a
 * backstop at SERVER_CHECKPOINT_PAGES: when the WAL reaches that size it copies what the worker has
 * not yet (little) and the next write starts the WAL over. Durability is SQLite's either way: a
 * checkpoint only moves committed pages.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

const CHECKPOINT_EVERY_MS = 100;
/** The server connection's own automatic checkpoint: 64 MiB of 4 KiB pages (SQLite's default is 1000). */
export const SERVER_CHECKPOINT_PAGES = 16384;

// CommonJS, run with eval: the worker needs no file of its own next to the compiled one, and tests
// that run the TypeScript sources use it as is.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const db = new Database(workerData.file, { fileMustExist: true });
// Never wait for a lock: a checkpoint that cannot run now runs at the next tick.
db.pragma('busy_timeout = 0');
db.pragma('synchronous = NORMAL');
const timer = setInterval(() => {
  try {
    db.pragma('wal_checkpoint(PASSIVE)');
  } catch (err) {
    if (err.code === 'SQLITE_BUSY' || err.code === 'SQLITE_LOCKED') return;
    clearInterval(timer);
    parentPort.postMessage({ failed: err.message });
  }
}, workerData.everyMs);
parentPort.on('message', () => {
  clearInterval(timer);
  db.close();
  parentPort.close();
});
`;

export interface Checkpointer {
  /** Stops the worker and closes its connection; resolves once it has. */
  stop(): Promise<void>;
}

/** Starts checkpointing `file`; `onFailure` runs once if the worker cannot go on (the caller then checkpoints itself). */
export function startCheckpointer(file: string, onFailure: (err: Error) => void): Checkpointer {
  const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
  const worker = new Worker(WORKER, { eval: true, workerData: { file, sqlite, everyMs: CHECKPOINT_EVERY_MS } });
  worker.unref();
  let failed = false;
  const fail = (err: Error) => {
    if (failed) return;
    failed = true;
    onFailure(err);
  };
  worker.on('message', (m: { failed?: string }) => m.failed && fail(new Error(m.failed)));
  worker.on('error', fail);
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  return {
    async stop() {
      failed = true;
      worker.postMessage('stop');
      const timer = setTimeout(() => void worker.terminate(), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}
