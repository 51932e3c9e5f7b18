/**
 * The fleet store in one SQLite file (better-sqlite3: synchronous, so each domain operation is one
 * real transaction without an async lock; WAL journal, so a killed server loses no committed write).
 */
import Database from 'better-sqlite3';
import { EdgekitError } from '../../util/errors.js';
import { MIGRATIONS } from './migrations.js';
import { SERVER_CHECKPOINT_PAGES, startCheckpointer, type Checkpointer } from './sqlite-checkpointer.js';
import {
  adminTokenOf, deviceAccessOf, deviceOf, json, memberCountsOf, memberOf, parse, provisioningTokenOf, releaseOf, reportOf, rolloutOf, ROLLOUT_PATCH_COLUMNS, samePem, str,
  windowsColumn, type Row,
} from './rows.js';
import type {
  AdminTokenRow, AuditRow, ChannelRow, CheckInUpdate, DeviceAccess, DeviceQuery, DeviceRow, DeviceStatus, FleetStore, MemberCounts,
  MemberRow, MemberState, ProvisioningTokenRow, RolloutCandidate, ReleaseRow, RolloutPatch, RolloutRow, RolloutState, StoredReport,
} from './store.js';

export function openSqliteStore(file: string): FleetStore {
  let db: Database.Database;
  try {
    db = new Database(file);
    db.pragma('journal_mode = WAL');
    // With WAL, NORMAL syncs at checkpoints, not at every commit: a commit survives the server being
    // killed (it is in the WAL file); only a power loss or OS crash can drop the last commits, never
    // corrupt the file. (better-sqlite3 builds default to this already; stated so it stays so.)
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
  } catch (err) {
    throw new EdgekitError(`${file}: cannot open the fleet database: ${(err as Error).message}`);
  }
  // Checkpoints (and their fsync) in a worker thread, off the event loop (sqlite-checkpointer.ts).
  let checkpointer: Checkpointer | null = null;
  if (!db.memory) {
    // Without the worker, SQLite's own checkpoints every 1000 pages (its default) on this connection.
    const checkpointHere = () => {
      if (db.open) db.pragma('wal_autocheckpoint = 1000');
    };
    try {
      checkpointer = startCheckpointer(file, checkpointHere);
      db.pragma(`wal_autocheckpoint = ${SERVER_CHECKPOINT_PAGES}`);
    } catch {
      checkpointHere();
    }
  }
  return new SqliteStore(db, checkpointer);
}

interface PendingCheckIn {
  id: string;
  u: CheckInUpdate;
  done: (err?: Error) => void;
}

class SqliteStore implements FleetStore {
  private readonly stmts = new Map<string, Database.Statement>();
  /** Check-ins received in this turn of the event loop, committed together (see recordCheckIn). */
  private checkIns: PendingCheckIn[] = [];
  /**
   * listRollouts answers by query, frozen, while the rollouts table is unchanged: every check-in
   * asks for its channel's live rollouts, which change a few times a day. Cleared by this store's
   * own writes to rollouts (every method that writes that table calls rolloutsChanged) and when
   * SQLite's data_version says another connection committed to the file.
   */
  private rolloutCache = new Map<string, readonly RolloutRow[]>();
  private rolloutCacheDataVersion: unknown = null;
  constructor(private readonly db: Database.Database, private readonly checkpointer: Checkpointer | null) {}

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
    await this.checkpointer?.stop();
    this.commitCheckIns();
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
    return deviceOf(r, report ? reportOf(report) : null);
  }

  async getDevice(id: string): Promise<DeviceRow | null> {
    const r = this.q(`SELECT * FROM devices WHERE id = ?`).get(id) as Row | undefined;
    return r ? this.device(r) : null;
  }

  async getDeviceAccess(id: string): Promise<DeviceAccess | null> {
    const r = this.q(`SELECT id, status, channel, tags, key_changed_at FROM devices WHERE id = ?`).get(id) as Row | undefined;
    return r ? deviceAccessOf(r) : null;
  }

  async insertDevice(d: Pick<DeviceRow, 'id' | 'publicKey' | 'status' | 'channel' | 'tags' | 'createdAt'>): Promise<boolean> {
    this.commitCheckIns();
    return this.q(`INSERT INTO devices (id, public_key, status, channel, tags, created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`)
      .run(d.id, d.publicKey, d.status, d.channel, json([...d.tags].sort()), d.createdAt).changes > 0;
  }

  async replaceDeviceKey(id: string, expect: string | null, publicKey: string, at: number): Promise<boolean> {
    this.commitCheckIns();
    return this.db.transaction(() => {
      const r = this.q(`SELECT public_key FROM devices WHERE id = ?`).get(id) as Row | undefined;
      if (!r || (expect !== null && !samePem(String(r.public_key), expect))) return false;
      return this.q(`UPDATE devices SET public_key = ?, key_changed_at = ? WHERE id = ?`).run(publicKey, at, id).changes > 0;
    }).immediate();
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
    this.commitCheckIns();
    return this.q(`UPDATE devices SET status = ? WHERE id = ?`).run(status, id).changes > 0;
  }

  async setDeviceTags(id: string, tags: string[]): Promise<boolean> {
    this.commitCheckIns();
    return this.q(`UPDATE devices SET tags = ? WHERE id = ?`).run(json([...new Set(tags)].sort()), id).changes > 0;
  }

  async setDeviceChannel(id: string, channel: string): Promise<boolean> {
    this.commitCheckIns();
    return this.q(`UPDATE devices SET channel = ? WHERE id = ?`).run(channel, id).changes > 0;
  }

  /**
   * Group commit: the check-ins that arrive in one turn of the event loop are written in one
   * transaction when the turn ends (setImmediate), and each call resolves only once that transaction
   * has committed, so nothing is answered before it is stored. One commit per check-in cost more than
   * the rest of a check-in together (each commit writes its pages to the WAL). Every other write
   * commits the waiting check-ins first, so writes to a device keep the order they arrived in.
   */
  recordCheckIn(id: string, u: CheckInUpdate): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.checkIns.length) setImmediate(() => this.commitCheckIns());
      this.checkIns.push({ id, u, done: (err) => (err ? reject(err) : resolve()) });
    });
  }

  private commitCheckIns(): void {
    const batch = this.checkIns;
    if (!batch.length) return;
    this.checkIns = [];
    const update = this.q(`UPDATE devices SET board = ?, version = ?, previous_version = COALESCE(?, previous_version), slot = ?, slot_state = ?, last_seen = ? WHERE id = ?`);
    try {
      this.db.transaction(() => {
        for (const { id, u } of batch) update.run(u.board, u.version, u.previousVersion, u.slot, u.slotState ? json(u.slotState) : null, u.at, id);
      })();
    } catch (err) {
      for (const c of batch) c.done(err as Error);
      return;
    }
    for (const c of batch) c.done();
  }

  async recordReport(r: StoredReport, member: { rolloutId: string; state: MemberState } | null): Promise<boolean> {
    this.commitCheckIns();
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

  async deleteRelease(channel: string, version: string): Promise<boolean> {
    return this.q(`DELETE FROM releases WHERE channel = ? AND version = ?`).run(channel, version).changes > 0;
  }

  async insertRollout(r: RolloutRow): Promise<void> {
    this.rolloutsChanged();
    this.q(`INSERT INTO rollouts (id, version, channel, filter, stages, max_failure_ratio, min_success_ratio, windows, state, stage, stage_started_at, reason, created_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
      .run(r.id, r.version, r.channel, json(r.filter), json(r.stages), r.maxFailureRatio, r.minSuccessRatio, windowsColumn(r.windows),
        r.state, r.stage, r.stageStartedAt, r.reason, r.createdAt);
  }

  async getRollout(id: string): Promise<RolloutRow | null> {
    const r = this.q(`SELECT * FROM rollouts WHERE id = ?`).get(id) as Row | undefined;
    return r ? rolloutOf(r) : null;
  }

  async listRollouts(q: { channel?: string; states?: RolloutState[] } = {}): Promise<RolloutRow[]> {
    const dataVersion = this.q(`PRAGMA data_version`).pluck().get();
    if (dataVersion !== this.rolloutCacheDataVersion) this.rolloutsChanged(dataVersion);
    const key = `${q.channel ?? ''}\n${q.states?.join(',') ?? '*'}\n${q.channel === undefined}`;
    let rows = this.rolloutCache.get(key);
    if (!rows) {
      // Filtered in SQL: parsing the rows of every other rollout ever made cost more than the query.
      const where: string[] = [];
      const args: unknown[] = [];
      if (q.channel !== undefined) (where.push('channel = ?'), args.push(q.channel));
      if (q.states) (where.push(q.states.length ? `state IN (${q.states.map(() => '?').join(', ')})` : '0'), args.push(...q.states));
      const sql = `SELECT * FROM rollouts ${where.length ? `WHERE ${where.join(' AND ')} ` : ''}ORDER BY created_at, id`;
      rows = Object.freeze((this.q(sql).all(...args) as Row[]).map((r) => deepFreeze(rolloutOf(r))));
      this.rolloutCache.set(key, rows);
    }
    return rows.slice();
  }

  private rolloutsChanged(dataVersion: unknown = this.rolloutCacheDataVersion): void {
    this.rolloutCache.clear();
    this.rolloutCacheDataVersion = dataVersion;
  }

  async transitionRollout(id: string, expect: Pick<RolloutRow, 'state' | 'stage'>, patch: RolloutPatch, audit: Omit<AuditRow, 'seq'> | null): Promise<boolean> {
    this.rolloutsChanged();
    const keys = Object.keys(patch).filter((k) => k in ROLLOUT_PATCH_COLUMNS) as Array<keyof RolloutPatch>;
    return this.db.transaction(() => {
      const changed = this.db.prepare(`UPDATE rollouts SET ${keys.map((k) => `${ROLLOUT_PATCH_COLUMNS[k]} = ?`).join(', ') || 'id = id'} WHERE id = ? AND state = ? AND stage = ?`)
        .run(...keys.map((k) => patch[k] ?? null), id, expect.state, expect.stage).changes > 0;
      if (changed && audit) this.audit(audit);
      return changed;
    })();
  }

  async getMember(rolloutId: string, deviceId: string): Promise<MemberRow | null> {
    const r = this.q(`SELECT * FROM rollout_members WHERE rollout_id = ? AND device_id = ?`).get(rolloutId, deviceId) as Row | undefined;
    return r ? memberOf(r) : null;
  }

  async addMember(m: MemberRow): Promise<boolean> {
    // The row is added only while the rollout offers that stage; a member already there stays.
    return this.db.transaction(() => {
      const open = this.q(`SELECT 1 FROM rollouts WHERE id = ? AND state IN ('running', 'completed') AND stage >= ?`).get(m.rolloutId, m.stage);
      if (!open) return false;
      this.q(`INSERT INTO rollout_members (rollout_id, device_id, stage, state, updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (rollout_id, device_id) DO NOTHING`)
        .run(m.rolloutId, m.deviceId, m.stage, m.state, m.updatedAt);
      return true;
    })();
  }

  async listMembers(rolloutId: string): Promise<MemberRow[]> {
    return (this.q(`SELECT * FROM rollout_members WHERE rollout_id = ? ORDER BY device_id`).all(rolloutId) as Row[]).map(memberOf);
  }

  async memberCounts(rolloutId: string): Promise<MemberCounts> {
    return memberCountsOf(this.q(`SELECT state, COUNT(*) AS n FROM rollout_members WHERE rollout_id = ? GROUP BY state`).all(rolloutId) as Row[]);
  }

  async findMembership(deviceId: string, version: string): Promise<MemberRow | null> {
    const r = this.q(`SELECT m.* FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id WHERE m.device_id = ? AND r.version = ? ORDER BY r.created_at DESC, r.id DESC`)
      .get(deviceId, version) as Row | undefined;
    return r ? memberOf(r) : null;
  }

  async insertAdminToken(t: AdminTokenRow & { hash: string }): Promise<void> {
    this.q(`INSERT INTO admin_tokens (id, hash, name, scope, created_at) VALUES (?, ?, ?, ?, ?)`).run(t.id, t.hash, t.name, t.scope, t.createdAt);
  }

  async insertFirstAdminToken(t: AdminTokenRow & { hash: string }): Promise<boolean> {
    return this.db.transaction(() => {
      if (Number((this.q(`SELECT COUNT(*) AS n FROM admin_tokens`).get() as Row).n) > 0) return false;
      this.q(`INSERT INTO admin_tokens (id, hash, name, scope, created_at) VALUES (?, ?, ?, ?, ?)`).run(t.id, t.hash, t.name, t.scope, t.createdAt);
      return true;
    }).immediate();
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
    return r ? provisioningTokenOf(r) : null;
  }

  async consumeNonce(nonce: string, expiresAt: number): Promise<boolean> {
    return this.q(`INSERT INTO used_nonces (nonce, expires_at) VALUES (?, ?) ON CONFLICT (nonce) DO NOTHING`).run(nonce, expiresAt).changes > 0;
  }

  async pruneReports(before: number, keepPerDevice: number): Promise<number> {
    this.commitCheckIns();
    return this.q(`DELETE FROM reports WHERE (device_id, id) IN (
      SELECT device_id, id FROM (
        SELECT device_id, id, received_at, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY received_at DESC, id DESC) AS n FROM reports
      ) ranked WHERE ranked.n > ? AND ranked.received_at < ?)`).run(keepPerDevice, before).changes;
  }

  async pruneNonces(before: number): Promise<void> {
    this.q(`DELETE FROM used_nonces WHERE expires_at < ?`).run(before);
  }

  async takeLease(name: string, holder: string, until: number, now: number): Promise<boolean> {
    return this.q(`INSERT INTO leases (name, holder, until_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
      WHERE leases.until_ms < ? OR leases.holder = excluded.holder`).run(name, holder, until, now).changes > 0;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    this.q(`DELETE FROM leases WHERE name = ? AND holder = ?`).run(name, holder);
  }

  async appendAudit(a: Omit<AuditRow, 'seq'>): Promise<void> {
    this.db.transaction(() => this.audit(a))();
  }

  private audit(a: Omit<AuditRow, 'seq'>): void {
    const seq = Number((this.q(`SELECT COALESCE(MAX(seq), 0) + 1 AS s FROM audit`).get() as Row).s);
    this.q(`INSERT INTO audit (seq, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)`).run(seq, a.at, a.actor, a.action, a.target, json(a.detail ?? null));
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

/** Rows handed out from a cache are frozen, so a caller that changes one fails at once instead of changing it for every later caller. */
function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}
