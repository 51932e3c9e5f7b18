/**
 * Database rows -> the store's types, shared by the SQLite and PostgreSQL stores (both keep the same
 * columns; JSON in TEXT columns; BIGINT may arrive as a string from PostgreSQL, hence Number()).
 */
import type {
  AdminTokenRow, DeviceAccess, DeviceRow, DeviceStatus, MaintenanceWindow, MemberRow, MemberState, ProvisioningTokenRow, ReleaseRow, RolloutRow, RolloutState,
  StoredReport,
} from './store.js';

export type Row = Record<string, unknown>;

export const json = (v: unknown) => JSON.stringify(v);
export const parse = <T>(v: unknown): T => JSON.parse(String(v)) as T;
export const num = (v: unknown) => (v === null || v === undefined ? null : Number(v));
export const str = (v: unknown) => (v === null || v === undefined ? null : String(v));
/** Two PEM texts of one key: line breaks and trailing newlines may differ between writers. */
export const samePem = (a: string, b: string) => a.replace(/\s+/g, '') === b.replace(/\s+/g, '');

export function deviceOf(r: Row, lastReport: StoredReport | null): DeviceRow {
  return {
    id: String(r.id),
    publicKey: String(r.public_key),
    status: r.status as DeviceStatus,
    board: str(r.board),
    channel: String(r.channel),
    tags: parse<string[]>(r.tags),
    version: str(r.version),
    previousVersion: str(r.previous_version),
    slot: str(r.slot),
    slotState: r.slot_state ? parse<Record<string, string>>(r.slot_state) : null,
    lastSeen: num(r.last_seen),
    lastReport,
    createdAt: Number(r.created_at),
    keyChangedAt: num(r.key_changed_at),
  };
}

/** A rollout's maintenance windows for the `windows` column: NULL when there are none (any time). */
export const windowsColumn = (w: MaintenanceWindow[]) => (w.length ? json(w) : null);

export function deviceAccessOf(r: Row): DeviceAccess {
  return { id: String(r.id), status: r.status as DeviceStatus, channel: String(r.channel), tags: parse<string[]>(r.tags), keyChangedAt: num(r.key_changed_at) };
}

export function reportOf(r: Row): StoredReport {
  return {
    id: String(r.id), deviceId: String(r.device_id), state: String(r.state), version: str(r.version), running: String(r.running),
    slot: String(r.slot), reason: str(r.reason), receivedAt: Number(r.received_at),
  };
}

export function releaseOf(r: Row): ReleaseRow {
  return { version: String(r.version), channel: String(r.channel), board: str(r.board), createdAt: Number(r.created_at) };
}

export function rolloutOf(r: Row): RolloutRow {
  return {
    id: String(r.id), version: String(r.version), channel: String(r.channel), filter: parse(r.filter), stages: parse(r.stages),
    maxFailureRatio: Number(r.max_failure_ratio), minSuccessRatio: Number(r.min_success_ratio),
    windows: r.windows ? parse<MaintenanceWindow[]>(r.windows) : [], state: r.state as RolloutState,
    stage: Number(r.stage), stageStartedAt: Number(r.stage_started_at), reason: str(r.reason), createdAt: Number(r.created_at),
  };
}

export function memberOf(r: Row): MemberRow {
  return { rolloutId: String(r.rollout_id), deviceId: String(r.device_id), stage: Number(r.stage), state: r.state as MemberState, updatedAt: Number(r.updated_at) };
}

export function adminTokenOf(r: Row): AdminTokenRow {
  return { id: String(r.id), name: String(r.name), scope: r.scope as AdminTokenRow['scope'], createdAt: Number(r.created_at) };
}

export function provisioningTokenOf(r: Row): ProvisioningTokenRow {
  return { id: String(r.id), channel: String(r.channel), tags: parse<string[]>(r.tags), expiresAt: num(r.expires_at), createdAt: Number(r.created_at) };
}

/** Counts of rollout members by state -> MemberCounts. */
export function memberCountsOf(rows: Row[]): { offered: number; inProgress: number; succeeded: number; failed: number } {
  const c = { offered: 0, inProgress: 0, succeeded: 0, failed: 0 };
  for (const r of rows) {
    const n = Number(r.n);
    c.offered += n;
    if (r.state === 'succeeded') c.succeeded += n;
    else if (r.state === 'failed') c.failed += n;
    else if (r.state !== 'offered') c.inProgress += n;
  }
  return c;
}

/** The columns a rollout patch may set. */
export const ROLLOUT_PATCH_COLUMNS = { state: 'state', stage: 'stage', stageStartedAt: 'stage_started_at', reason: 'reason' } as const;
