/**
 * What the agent remembers across reboots and restarts, in one JSON file on /data written
 * atomically (temp file, fsync, rename): the attempt in progress and how far its download got
 * (only bytes already flushed to the slot count), versions that rolled back, what each slot holds.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { writeAtomic } from '../../util/atomic.js';
import type { Slot } from '../slots/bootchooser.js';

export type AttemptPhase = 'writing' | 'written' | 'tried';

export interface Attempt {
  version: string;
  slot: Slot;
  /** The slot payload being written: its signed sha256 and size. */
  sha256: string;
  size: number;
  /** 'full': the payload streams from the server; 'delta': rebuilt from a downloaded delta. */
  source: 'full' | 'delta';
  phase: AttemptPhase;
  /** Payload bytes written and flushed to the slot (full downloads resume from here). */
  flushed: number;
  /** Bytes downloaded for this attempt so far, retries included: what the data budget counts. */
  downloaded: number;
  /** Health checks failed on this many boots of the new slot. */
  unhealthyBoots?: number;
}

export interface AgentState {
  attempt?: Attempt;
  /** Releases that were tried and fell back: not offered again (a higher version is). */
  rolledBack: string[];
  /** The version each slot holds, as far as the agent installed or saw it. */
  slots: Partial<Record<Slot, string>>;
}

const FILE = 'agent-state.json';

export class StateStore {
  constructor(readonly dir: string) {}

  get path(): string {
    return join(this.dir, FILE);
  }

  async load(): Promise<AgentState> {
    const text = await readFile(this.path, 'utf8').catch(() => undefined);
    if (text === undefined) return { rolledBack: [], slots: {} };
    try {
      const s = JSON.parse(text) as Partial<AgentState>;
      return { attempt: s.attempt, rolledBack: s.rolledBack ?? [], slots: s.slots ?? {} };
    } catch {
      // Cannot happen with atomic writes unless the storage lies; starting over is safe (the
      // slot is re-checked against the signed hash before anything boots it).
      return { rolledBack: [], slots: {} };
    }
  }

  async save(state: AgentState): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeAtomic(this.path, (tmp) => writeFile(tmp, JSON.stringify(state, null, 2) + '\n'));
  }
}
