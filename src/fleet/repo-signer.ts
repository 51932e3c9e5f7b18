/**
 * The fleet server's one signing job: re-signing the release repository's snapshot and timestamp
 * (the online roles) before they expire, so devices keep accepting the metadata while nobody
 * publishes. The server holds those keys only (`--online-keys`): a folder that also holds a root
 * or targets private key is refused, because a server that holds them could make releases itself
 * (they stay offline with the operator, docs/releases.md).
 *
 * Several servers may share one database and repository folder: a lease in the store lets one of
 * them re-sign at a time, so timestamp versions never fork. Publishing a release over the admin
 * API (repo-publish.ts) writes snapshot and timestamp too, so it takes the same lease.
 */
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { readPolicy } from '../ota/repo/policy.js';
import { readState } from '../ota/repo/metadata-files.js';
import { refreshMetadata } from '../ota/repo/repo-admin.js';
import { loadRoleKeys } from '../ota/repo/role-keys.js';
import { EdgekitError } from '../util/errors.js';
import type { FleetStore } from './store/store.js';

const LEASE = 'repo-signing';
/** Longer than a re-signing takes; a server that dies holding it is replaced after this. */
const LEASE_MS = 5 * 60_000;
export const SIGNING_CHECK_MS = 60_000;
/** How often a job waiting for the lease asks again. */
const LEASE_POLL_MS = 200;

/** Refuses a key folder unless it holds snapshot and timestamp keys, and no root or targets private key. */
export async function checkOnlineKeys(dir: string): Promise<void> {
  const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`--online-keys ${dir}: cannot read it (${err.code ?? err.message})`);
  });
  const offline = names.filter((n) => /^(root|targets)-\d+\.key$/.test(n));
  if (offline.length) {
    throw new EdgekitError(`--online-keys ${dir}: holds ${offline.join(', ')}: root and targets keys stay offline with the operator; give the server a folder with the snapshot and timestamp keys only`);
  }
  for (const role of ['snapshot', 'timestamp'] as const) {
    if (!(await loadRoleKeys(dir, role)).length) throw new EdgekitError(`--online-keys ${dir}: no ${role} key (${role}-<n>.key)`);
  }
}

/** True when the timestamp or the snapshot has less than half its validity period left. */
export async function signingDue(repo: string, now: number): Promise<boolean> {
  const [policy, state] = await Promise.all([readPolicy(repo), readState(repo)]);
  const left = (expires: string) => Date.parse(expires) - now;
  return left(state.timestamp.signed.expires) < (policy.expires.timestamp * 1000) / 2 || left(state.snapshot.signed.expires) < (policy.expires.snapshot * 1000) / 2;
}

export interface RepoSignerOptions {
  repo: string;
  keys: string;
  store: FleetStore;
  log: (line: string) => void;
  now?: () => number;
  /** Recorded in the audit log when it re-signs. */
  audit: (detail: { timestampVersion: number; expires: string }) => Promise<void>;
}

export class RepoSigner {
  private readonly holder = `srv_${randomBytes(6).toString('hex')}`;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;
  /** The end of the queue of jobs that write the repository in this process (the store lease orders servers). */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: RepoSignerOptions) {}

  get repo(): string {
    return this.o.repo;
  }

  get keys(): string {
    return this.o.keys;
  }

  /** Checks now and then every `intervalMs`; errors are logged, the next check tries again. */
  start(intervalMs = SIGNING_CHECK_MS): void {
    const run = () => {
      this.running ??= this.check()
        .catch((err: Error) => this.o.log(`fleet: re-signing ${this.o.repo}'s snapshot and timestamp failed: ${err.message}`))
        .finally(() => (this.running = undefined));
    };
    run();
    this.timer = setInterval(run, intervalMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** Re-signs when due and this server holds the lease: 'signed', 'fresh' (not due) or 'busy' (another server has the lease). */
  async check(): Promise<'signed' | 'fresh' | 'busy'> {
    const now = this.o.now?.() ?? Date.now();
    if (!(await signingDue(this.o.repo, now))) return 'fresh';
    const r = await this.exclusive(async () => {
      // Read again under the lease: another server may have signed between the first look and the lease.
      if (!(await signingDue(this.o.repo, now))) return 'fresh' as const;
      return refreshMetadata({ repo: this.o.repo, keys: this.o.keys, now: new Date(now) });
    }, 0);
    if (r === 'busy' || r === 'fresh') return r;
    this.o.log(`fleet: re-signed snapshot and timestamp of ${this.o.repo}: timestamp version ${r.timestampVersion}, valid until ${r.expires}`);
    await this.o.audit(r);
    return 'signed';
  }

  /**
   * Runs `job` (which writes the repository's metadata) while no other job of this process runs
   * and this server holds the store lease, waiting up to `waitMs` for another server to give it
   * up; 'busy' when it did not. Re-signing and publishing go through here, so they never interleave.
   */
  async exclusive<T>(job: () => Promise<T>, waitMs: number): Promise<T | 'busy'> {
    const turn = this.queue.then(async () => {
      const waitUntil = Date.now() + waitMs;
      for (;;) {
        const now = this.o.now?.() ?? Date.now();
        if (await this.o.store.takeLease(LEASE, this.holder, now + LEASE_MS, now)) break;
        if (Date.now() >= waitUntil) return 'busy' as const;
        await new Promise((r) => setTimeout(r, LEASE_POLL_MS));
      }
      try {
        return await job();
      } finally {
        await this.o.store.releaseLease(LEASE, this.holder).catch((err: Error) => this.o.log(`fleet: giving up the repository signing lease failed (it expires by itself): ${err.message}`));
      }
    });
    this.queue = turn.catch(() => {});
    return turn;
  }
}
