/**
 * The fleet store in one SQLite file (better-sqlite3: synchronous, so each domain operation is one
 * real transaction without an async lock; WAL journal, so a killed server loses no committed write).
 */
import Database from 'better-sqlite3';
import { EdgekitError } from '../../util/errors.js';
import { MIGRATIONS } from './migrations.js';
import type {
  AdminTokenRow, AuditRow, ChannelRow, CheckInUpdate, DeviceQuery, DeviceRow, DeviceStatus, FleetStore, MaintenanceWindow, MemberCounts,
  MemberRow, MemberState, ProvisioningTokenRow, RolloutCandidate, ReleaseRow, RolloutRow, RolloutState, StoredReport,
} from './store.js';

type Row = Record<string, unknown>;

export function openSqliteStore(file: string): FleetStore {
  let db: Database.Database;
  try {
    db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
  } catch (err) {
    throw new EdgekitError(`${file}: cannot open the fleet database: ${(err as Error).message}`);
  }
  return new SqliteStore(db);
}

const json = (v: unknown) => JSON.stringify(v);
const parse = <T>(v: unknown): T => JSON.parse(String(v)) as T;
const num = (v: unknown) => (v === null || v === undefined ? null : Number(v));
const str = (v: unknown) => (v === null || v === undefined ? null : String(v));

class SqliteStore implements FleetStore {
  private readonly stmts = new Map<string, Database.Statement>();
  constructor(private readonly db: Database.Database) {}

  private q(sql: string): Database.Statement {
    let s = this.stmts.get(sql);
    if (!s) this.stmts.set(sql, (s = this.db.prepare(sql)));
    return s;
  }

  async migrate(): Promise<number> {
    this.db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)`);
    const done = Number((this.db.prepare(`SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations`).get() as Row).v);
    if (done > MIGRATIONS.length) throw new EdgekitError(`fleet database schema ${done} is newer than this edgekit (${MIGRATIONS.length})`);
    for (let v = done + 1; v <= MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        for (const sql of MIGRATIONS[v - 1]) this.db.exec(sql);
        this.db.prepare(`INSERT INTO schema_migrations (version) VALUES (?)`).run(v);
      })();
    }
    return MIGRATIONS.length;
  }

  async close(): Promise<void> {
    this.db.close();
  }

  async getSetting(key: string): Promise<string | null> {
    return str((this.q(`SELECT value FROM settings WHERE key = ?`).get(key) as Row | undefined)?.value);
  }

  async initSetting(key: string, value: string): Promise<string> {
    this.q(`INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`).run(key, value);
    return (await this.getSetting(key))!;
  }

  private device(r: Row): DeviceRow {
    const report = r.last_report_id ? this.q(`SELECT * FROM reports WHERE device_id = ? AND id = ?`).get(r.id, r.last_report_id) as Row : null;
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
      lastReport: report ? reportOf(report) : null,
      createdAt: Number(r.created_at),
    };
  }

  async getDevice(id: string): Promise<DeviceRow | null> {
    const r = this.q(`SELECT * FROM devices WHERE id = ?`).get(id) as Row | undefined;
    return r ? this.device(r) : null;
  }

  async insertDevice(d: Pick<DeviceRow, 'id' | 'publicKey' | 'status' | 'channel' | 'tags' | 'createdAt'>): Promise<void> {
    this.q(`INSERT INTO devices (id, public_key, status, channel, tags, created_at) VALUES (?, ?, ?, ?, ?, ?)`)
      .run(d.id, d.publicKey, d.status, d.channel, json([...d.tags].sort()), d.createdAt);
  }

  async listDevices(q: DeviceQuery): Promise<DeviceRow[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    if (q.status) (where.push('status = ?'), args.push(q.status));
    if (q.channel) (where.push('channel = ?'), args.push(q.channel));
    if (q.board) (where.push('board = ?'), args.push(q.board));
    const rows = this.db.prepare(`SELECT * FROM devices ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id`).all(...args) as Row[];
    const devices = rows.map((r) => this.device(r));
    return q.tag ? devices.filter((d) => d.tags.includes(q.tag!)) : devices;
  }

  async listRolloutCandidates(channel: string): Promise<RolloutCandidate[]> {
    return (this.q(`SELECT id, board, tags, version FROM devices WHERE channel = ? AND status = 'accepted' ORDER BY id`).all(channel) as Row[])
      .map((r) => ({ id: String(r.id), board: str(r.board), tags: parse<string[]>(r.tags), version: str(r.version) }));
  }

  async setDeviceStatus(id: string, status: DeviceStatus): Promise<boolean> {
    return this.q(`UPDATE devices SET status = ? WHERE id = ?`).run(status, id).changes > 0;
  }

  async setDeviceTags(id: string, tags: string[]): Promise<boolean> {
    return this.q(`UPDATE devices SET tags = ? WHERE id = ?`).run(json([...new Set(tags)].sort()), id).changes > 0;
  }

  async setDeviceChannel(id: string, channel: string): Promise<boolean> {
    return this.q(`UPDATE devices SET channel = ? WHERE id = ?`).run(channel, id).changes > 0;
  }

  async recordCheckIn(id: string, u: CheckInUpdate): Promise<void> {
    this.q(`UPDATE devices SET board = ?, version = ?, previous_version = COALESCE(?, previous_version), slot = ?, slot_state = ?, last_seen = ? WHERE id = ?`)
      .run(u.board, u.version, u.previousVersion, u.slot, u.slotState ? json(u.slotState) : null, u.at, id);
  }

  async recordReport(r: StoredReport, member: { rolloutId: string; state: MemberState } | null): Promise<boolean> {
    return this.db.transaction(() => {
      const inserted = this.q(
        `INSERT INTO reports (device_id, id, state, version, running, slot, reason, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, id) DO NOTHING`,
      ).run(r.deviceId, r.id, r.state, r.version, r.running, r.slot, r.reason, r.receivedAt).changes > 0;
      if (!inserted) return false;
      this.q(`UPDATE devices SET last_report_id = ?, last_seen = ?,
        previous_version = CASE WHEN version IS NOT NULL AND version <> ? THEN version ELSE previous_version END, version = ?, slot = ? WHERE id = ?`)
        .run(r.id, r.receivedAt, r.running, r.running, r.slot, r.deviceId);
      if (member) {
        this.q(`UPDATE rollout_members SET state = ?, updated_at = ? WHERE rollout_id = ? AND device_id = ?`)
          .run(member.state, r.receivedAt, member.rolloutId, r.deviceId);
      }
      return true;
    })();
  }

  async listDeviceReports(deviceId: string, limit: number): Promise<StoredReport[]> {
    return (this.q(`SELECT * FROM reports WHERE device_id = ? ORDER BY received_at DESC, id DESC LIMIT ?`).all(deviceId, limit) as Row[]).map(reportOf);
  }

  async listChannels(): Promise<ChannelRow[]> {
    return (this.q(`SELECT * FROM channels ORDER BY name`).all() as Row[]).map((r) => ({ name: String(r.name), createdAt: Number(r.created_at) }));
  }

  async insertChannel(c: ChannelRow): Promise<boolean> {
    return this.q(`INSERT INTO channels (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`).run(c.name, c.createdAt).changes > 0;
  }

  async listReleases(channel?: string): Promise<ReleaseRow[]> {
    const rows = (channel
      ? this.q(`SELECT * FROM releases WHERE channel = ? ORDER BY channel, created_at, version`).all(channel)
      : this.q(`SELECT * FROM releases ORDER BY channel, created_at, version`).all()) as Row[];
    return rows.map(releaseOf);
  }

  async getRelease(channel: string, version: string): Promise<ReleaseRow | null> {
    const r = this.q(`SELECT * FROM releases WHERE channel = ? AND version = ?`).get(channel, version) as Row | undefined;
    return r ? releaseOf(r) : null;
  }

  async insertRelease(r: ReleaseRow): Promise<boolean> {
    return this.q(`INSERT INTO releases (channel, version, board, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (channel, version) DO NOTHING`)
      .run(r.channel, r.version, r.board, r.createdAt).changes > 0;
  }

  async insertRollout(r: RolloutRow): Promise<void> {
    this.q(`INSERT INTO rollouts (id, version, channel, filter, stages, max_failure_ratio, min_success_ratio, windows, state, stage, stage_started_at, reason, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(r.id, r.version, r.channel, json(r.filter), json(r.stages), r.maxFailureRatio, r.minSuccessRatio, r.windows.length ? json(r.windows) : null,
        r.state, r.stage, r.stageStartedAt, r.reason, r.createdAt);
  }

  async getRollout(id: string): Promise<RolloutRow | null> {
    const r = this.q(`SELECT * FROM rollouts WHERE id = ?`).get(id) as Row | undefined;
    return r ? rolloutOf(r) : null;
  }

  async listRollouts(q: { channel?: string; states?: RolloutState[] } = {}): Promise<RolloutRow[]> {
    const rows = (this.q(`SELECT * FROM rollouts ORDER BY created_at, id`).all() as Row[]).map(rolloutOf);
    return rows.filter((r) => (!q.channel || r.channel === q.channel) && (!q.states || q.states.includes(r.state)));
  }

  async updateRollout(id: string, patch: Partial<Pick<RolloutRow, 'state' | 'stage' | 'stageStartedAt' | 'reason'>>): Promise<void> {
    const cols: Record<string, string> = { state: 'state', stage: 'stage', stageStartedAt: 'stage_started_at', reason: 'reason' };
    const keys = Object.keys(patch).filter((k) => k in cols) as Array<keyof typeof patch>;
    if (!keys.length) return;
    this.db.prepare(`UPDATE rollouts SET ${keys.map((k) => `${cols[k]} = ?`).join(', ')} WHERE id = ?`).run(...keys.map((k) => patch[k] ?? null), id);
  }

  async getMember(rolloutId: string, deviceId: string): Promise<MemberRow | null> {
    const r = this.q(`SELECT * FROM rollout_members WHERE rollout_id = ? AND device_id = ?`).get(rolloutId, deviceId) as Row | undefined;
    return r ? memberOf(r) : null;
  }

  async addMember(m: MemberRow): Promise<void> {
    this.q(`INSERT INTO rollout_members (rollout_id, device_id, stage, state, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout_id, device_id) DO NOTHING`)
      .run(m.rolloutId, m.deviceId, m.stage, m.state, m.updatedAt);
  }

  async listMembers(rolloutId: string): Promise<MemberRow[]> {
    return (this.q(`SELECT * FROM rollout_members WHERE rollout_id = ? ORDER BY device_id`).all(rolloutId) as Row[]).map(memberOf);
  }

  async memberCounts(rolloutId: string): Promise<MemberCounts> {
    const rows = this.q(`SELECT state, COUNT(*) AS n FROM rollout_members WHERE rollout_id = ? GROUP BY state`).all(rolloutId) as Row[];
    const c: MemberCounts = { offered: 0, inProgress: 0, succeeded: 0, failed: 0 };
    for (const r of rows) {
      const n = Number(r.n);
      c.offered += n;
      if (r.state === 'succeeded') c.succeeded += n;
      else if (r.state === 'failed') c.failed += n;
      else if (r.state !== 'offered') c.inProgress += n;
    }
    return c;
  }

  async findMembership(deviceId: string, version: string): Promise<MemberRow | null> {
    const r = this.q(`SELECT m.* FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id WHERE m.device_id = ? AND r.version = ? ORDER BY r.created_at DESC, r.id DESC`)
      .get(deviceId, version) as Row | undefined;
    return r ? memberOf(r) : null;
  }

  async insertAdminToken(t: AdminTokenRow & { hash: string }): Promise<void> {
    this.q(`INSERT INTO admin_tokens (id, hash, name, scope, created_at) VALUES (?, ?, ?, ?, ?)`).run(t.id, t.hash, t.name, t.scope, t.createdAt);
  }

  async findAdminToken(hash: string): Promise<AdminTokenRow | null> {
    const r = this.q(`SELECT * FROM admin_tokens WHERE hash = ?`).get(hash) as Row | undefined;
    return r ? adminTokenOf(r) : null;
  }

  async listAdminTokens(): Promise<AdminTokenRow[]> {
    return (this.q(`SELECT * FROM admin_tokens ORDER BY created_at, id`).all() as Row[]).map(adminTokenOf);
  }

  async countAdminTokens(): Promise<number> {
    return Number((this.q(`SELECT COUNT(*) AS n FROM admin_tokens`).get() as Row).n);
  }

  async insertProvisioningToken(t: ProvisioningTokenRow & { hash: string }): Promise<void> {
    this.q(`INSERT INTO provisioning_tokens (id, hash, channel, tags, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)`)
      .run(t.id, t.hash, t.channel, json(t.tags), t.expiresAt, t.createdAt);
  }

  async findProvisioningToken(hash: string): Promise<ProvisioningTokenRow | null> {
    const r = this.q(`SELECT * FROM provisioning_tokens WHERE hash = ?`).get(hash) as Row | undefined;
    return r ? { id: String(r.id), channel: String(r.channel), tags: parse<string[]>(r.tags), expiresAt: num(r.expires_at), createdAt: Number(r.created_at) } : null;
  }

  async appendAudit(a: Omit<AuditRow, 'seq'>): Promise<void> {
    this.db.transaction(() => {
      const seq = Number((this.q(`SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM audit`).get() as Row).s);
      this.q(`INSERT INTO audit (seq, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)`).run(seq, a.at, a.actor, a.action, a.target, json(a.detail ?? null));
    })();
  }

  async listAudit(limit: number): Promise<AuditRow[]> {
    return (this.q(`SELECT * FROM audit ORDER BY seq DESC LIMIT ?`).all(limit) as Row[]).map((r) => ({
      seq: Number(r.seq), at: Number(r.at), actor: String(r.actor), action: String(r.action), target: String(r.target), detail: parse(r.detail),
    }));
  }

  async deviceCountsByStatus(): Promise<Record<string, number>> {
    return Object.fromEntries((this.q(`SELECT status, COUNT(*) AS n FROM devices GROUP BY status ORDER BY status`).all() as Row[]).map((r) => [String(r.status), Number(r.n)]));
  }

  async reportCountsByState(): Promise<Record<string, number>> {
    return Object.fromEntries((this.q(`SELECT state, COUNT(*) AS n FROM reports GROUP BY state ORDER BY state`).all() as Row[]).map((r) => [String(r.state), Number(r.n)]));
  }
}

function reportOf(r: Row): StoredReport {
  return {
    id: String(r.id), deviceId: String(r.device_id), state: String(r.state), version: str(r.version), running: String(r.running),
    slot: String(r.slot), reason: str(r.reason), receivedAt: Number(r.received_at),
  };
}

function releaseOf(r: Row): ReleaseRow {
  return { version: String(r.version), channel: String(r.channel), board: str(r.board), createdAt: Number(r.created_at) };
}

function rolloutOf(r: Row): RolloutRow {
  return {
    id: String(r.id), version: String(r.version), channel: String(r.channel), filter: parse(r.filter), stages: parse(r.stages),
    maxFailureRatio: Number(r.max_failure_ratio), minSuccessRatio: Number(r.min_success_ratio),
    windows: r.windows ? parse<MaintenanceWindow[]>(r.windows) : [], state: r.state as RolloutState,
    stage: Number(r.stage), stageStartedAt: Number(r.stage_started_at), reason: str(r.reason), createdAt: Number(r.created_at),
  };
}

function memberOf(r: Row): MemberRow {
  return { rolloutId: String(r.rollout_id), deviceId: String(r.device_id), stage: Number(r.stage), state: r.state as MemberState, updatedAt: Number(r.updated_at) };
}

function adminTokenOf(r: Row): AdminTokenRow {
  return { id: String(r.id), name: String(r.name), scope: r.scope as AdminTokenRow['scope'], createdAt: Number(r.created_at) };
}
