/**
 * Reports on their way to the fleet server, kept on the data partition until the server has them:
 * one JSON file rewritten atomically (temp file, fsync, rename, fsync dir) on every change, so a
 * power cut or a reboot loses none, and sent oldest first. Each report gets its id when queued;
 * a report sent again after a cut (delivered, but not yet removed here) has the same id, and the
 * server counts it once. The queue is bounded: when full, the oldest progress report
 * (downloading, installing, rebooting) goes first, the outcomes (committed, rolled-back, failed) last.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { ReportRequest } from '../../fleet/protocol/messages.js';
import { writeFileAtomic } from '../../util/atomic.js';

const OUTCOMES = new Set<ReportRequest['state']>(['committed', 'rolled-back', 'failed']);

/** What one delivery run did. */
export interface FlushResult {
  delivered: number;
  /** Reports the server refused as malformed (4xx other than auth): dropped, or they would block the rest. */
  refused: number;
  left: number;
  /** Why delivery stopped early (server unreachable, device not accepted). */
  error?: Error;
}

/** Sends one report; throws to stop the run. `refused` errors drop the report and continue. */
export type SendReport = (r: ReportRequest) => Promise<void>;

export class RefusedReport extends Error {}

export class ReportQueue {
  private items: ReportRequest[] | undefined;
  /** Every change runs after the previous one: a report queued during a delivery waits its turn. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(readonly file: string, readonly limit: number, private readonly log: (line: string) => void = () => {}) {}

  /** A new report id: unique per device (time and 64 random bits). */
  static newId(): string {
    return `${Date.now().toString(36)}-${randomBytes(8).toString('hex')}`;
  }

  pending(): Promise<ReportRequest[]> {
    return this.serial(async () => [...(await this.load())]);
  }

  add(r: Omit<ReportRequest, 'id'> & { id?: string }): Promise<ReportRequest> {
    return this.serial(async () => {
      const items = await this.load();
      const report = { ...r, id: r.id ?? ReportQueue.newId() } as ReportRequest;
      items.push(report);
      while (items.length > this.limit) {
        const i = items.findIndex((x) => !OUTCOMES.has(x.state));
        const [dropped] = items.splice(i >= 0 ? i : 0, 1);
        this.log(`edgekit-agent: report queue full (${this.limit}): dropped the ${dropped.state}${dropped.version ? ` ${dropped.version}` : ''} report ${dropped.id}`);
      }
      await this.save(items);
      return report;
    });
  }

  /** Sends queued reports oldest first until one cannot be delivered; delivered ones leave the queue. */
  flush(send: SendReport): Promise<FlushResult> {
    return this.serial(async () => {
      const items = await this.load();
      const result: FlushResult = { delivered: 0, refused: 0, left: 0 };
      let done = 0;
      for (const r of items) {
        try {
          await send(r);
          result.delivered++;
        } catch (err) {
          if (!(err instanceof RefusedReport)) {
            result.error = err as Error;
            break;
          }
          this.log(`edgekit-agent: the server refused report ${r.id} (${r.state}): ${err.message}; dropped`);
          result.refused++;
        }
        done++;
      }
      if (done) {
        items.splice(0, done);
        await this.save(items);
      }
      result.left = items.length;
      return result;
    });
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    const next = this.chain.then(f, f);
    this.chain = next.catch(() => {});
    return next;
  }

  private async load(): Promise<ReportRequest[]> {
    if (this.items) return this.items;
    const text = await readFile(this.file, 'utf8').catch(() => undefined);
    let items: ReportRequest[] = [];
    if (text !== undefined) {
      try {
        const parsed = JSON.parse(text) as unknown;
        if (Array.isArray(parsed)) items = parsed as ReportRequest[];
      } catch {
        // Atomic writes leave either the old or the new file; a torn one means the storage lied.
        this.log(`edgekit-agent: ${this.file}: not a report queue; starting an empty one`);
      }
    }
    this.items = items;
    return items;
  }

  private async save(items: ReportRequest[]): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true });
    await writeFileAtomic(this.file, `${JSON.stringify(items)}\n`, 0o600);
  }
}
