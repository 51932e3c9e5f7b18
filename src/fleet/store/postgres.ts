/**
 * The fleet store in PostgreSQL, for several `edgekit serve` processes sharing one database.
 *
 * Client: `pg` (node-postgres), pure JavaScript (nothing to compile, unlike better-sqlite3), the most
 * used PostgreSQL client for Node, with a connection pool and server-side prepared statements.
 *
 * Each store method is one transaction. They run at READ COMMITTED; what two servers could race on
 * is made safe by the statement itself rather than by retrying whole SERIALIZABLE transactions:
 * - rollout transitions are compare-and-set UPDATEs on (state, stage) (PostgreSQL re-checks the
 *   WHERE against a row another transaction just changed), so a stage advances once;
 * - an offer takes a share lock on its rollout and checks it still offers that stage, so no offer
 *   lands after a concurrent pause, and rollout membership is a primary key (ON CONFLICT DO NOTHING),
 *   so a device is never a member twice;
 * - reports, nonces, channels and releases are keyed rows inserted with ON CONFLICT DO NOTHING;
 * - audit sequence numbers, the first admin token and migrations are taken under advisory locks.
 * Transactions that still hit a serialization failure or deadlock are retried.
 */
import pg from 'pg';
import { EdgekitError } from '../../util/errors.js';
import { MIGRATIONS } from './migrations.js';
import {
  adminTokenOf, deviceAccessOf, deviceOf, json, memberCountsOf, memberOf, provisioningTokenOf, releaseOf, reportOf, rolloutOf, ROLLOUT_PATCH_COLUMNS, samePem, str,
  windowsColumn, type Row,
} from './rows.js';
import type {
  AdminTokenRow, AuditRow, ChannelRow, CheckInUpdate, DeviceAccess, DeviceQuery, DeviceRow, DeviceStatus, FleetStore, MemberCounts, MemberRow, MemberState,
  ProvisioningTokenRow, ReleaseRow, RolloutCandidate, RolloutPatch, RolloutRow, RolloutState, StoredReport,
} from './store.js';

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.href;
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@');
  }
}

export function openPostgresStore(url: string, o: { log?: (line: string) => void; maxConnections?: number } = {}): FleetStore {
  let pool: pg.Pool;
  try {
    pool = new pg.Pool({ connectionString: url, max: o.maxConnections ?? 10, application_name: 'edgekit-fleet' });
  } catch (err) {
    throw new EdgekitError(`${redactUrl(url)}: not a usable PostgreSQL URL: ${(err as Error).message}`);
  }
  // An idle connection the server drops (restart, network) must not crash the process; the pool makes a new one.
  pool.on('error', (err) => o.log?.(`fleet: PostgreSQL connection lost: ${err.message}`));
  return new PostgresStore(pool, redactUrl(url));
}

/** SQLSTATEs after which the whole transaction is worth running again. */
const RETRYABLE = new Set(['40001', '40P01']);
const MAX_TRIES = 8;

/** Device row joined with its last report, in one round trip. */
const DEVICE_SELECT = `SELECT d.*, r.id AS r_id, r.state AS r_state, r.version AS r_version, r.running AS r_running, r.slot AS r_slot,
  r.reason AS r_reason, r.received_at AS r_received_at
  FROM devices d LEFT JOIN reports r ON r.device_id = d.id AND r.id = d.last_report_id`;

type Queryable = Pick<pg.PoolClient, 'query'>;

class PostgresStore implements FleetStore {
  /** Statement text -> prepared statement name (PostgreSQL prepares it once per connection). */
  private readonly names = new Map<string, string>();

  constructor(private readonly pool: pg.Pool, private readonly where: string) {}

  private async q(sql: string, values: unknown[] = [], on: Queryable = this.pool): Promise<pg.QueryResult<Row>> {
    let name = this.names.get(sql);
    if (!name) this.names.set(sql, (name = `ek${this.names.size}`));
    return on.query<Row>({ name, text: sql, values });
  }

  private async tx<T>(f: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await this.pool.connect();
      let broken: Error | undefined;
      try {
        await c.query('BEGIN');
        const result = await f(c);
        await c.query('COMMIT');
        return result;
      } catch (err) {
        await c.query('ROLLBACK').catch((e: Error) => (broken = e));
        if (attempt < MAX_TRIES && RETRYABLE.has((err as { code?: string }).code ?? '')) {
          await new Promise((r) => setTimeout(r, Math.random() * 5 * attempt));
          continue;
        }
        throw err;
      } finally {
        c.release(broken);
      }
    }
  }

  async migrate(): Promise<number> {
    let c: pg.PoolClient;
    try {
      c = await this.pool.connect();
    } catch (err) {
      throw new EdgekitError(`${this.where}: cannot connect to PostgreSQL: ${errorText(err)}`);
    }
    let failed: Error | undefined;
    try {
      // Servers starting at once: one migrates, the others wait here and then find nothing to do.
      await c.query(`SELECT pg_advisory_lock(hashtext('edgekit-fleet:migrate'))`);
      await c.query(`CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)`);
      const done = Number((await c.query<Row>(`SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations`)).rows[0].v);
      if (done > MIGRATIONS.length) throw new EdgekitError(`${this.where}: fleet database schema ${done} is newer than this edgekit (${MIGRATIONS.length})`);
      for (let v = done + 1; v <= MIGRATIONS.length; v++) {
        await c.query('BEGIN');
        try {
          for (const sql of MIGRATIONS[v - 1]) await c.query(sql);
          await c.query(`INSERT INTO schema_migrations (version) VALUES ($1)`, [v]);
          await c.query('COMMIT');
        } catch (err) {
          await c.query('ROLLBACK');
          throw new EdgekitError(`${this.where}: schema migration ${v} failed: ${errorText(err)}`);
        }
      }
      await c.query(`SELECT pg_advisory_unlock(hashtext('edgekit-fleet:migrate'))`);
      return MIGRATIONS.length;
    } catch (err) {
      // Dropping the connection releases the advisory lock whatever state it is in.
      failed = err as Error;
      if (err instanceof EdgekitError) throw err;
      throw new EdgekitError(`${this.where}: cannot migrate the fleet database: ${errorText(err)}`);
    } finally {
      c.release(failed);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  async getSetting(key: string): Promise<string | null> {
    return str((await this.q(`SELECT value FROM settings WHERE key = $1`, [key])).rows[0]?.value);
  }

  async initSetting(key: string, value: string): Promise<string> {
    // Two statements: at READ COMMITTED the SELECT sees a value another server committed while the INSERT waited for it.
    return this.tx(async (c) => {
      await this.q(`INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING`, [key, value], c);
      return String((await this.q(`SELECT value FROM settings WHERE key = $1`, [key], c)).rows[0].value);
    });
  }

  async getDevice(id: string): Promise<DeviceRow | null> {
    const r = (await this.q(`${DEVICE_SELECT} WHERE d.id = $1`, [id])).rows[0];
    return r ? joinedDevice(r) : null;
  }

  async getDeviceAccess(id: string): Promise<DeviceAccess | null> {
    const r = (await this.q(`SELECT id, status, channel, tags, key_changed_at FROM devices WHERE id = $1`, [id])).rows[0];
    return r ? deviceAccessOf(r) : null;
  }

  async insertDevice(d: Pick<DeviceRow, 'id' | 'publicKey' | 'status' | 'channel' | 'tags' | 'createdAt'>): Promise<boolean> {
    const r = await this.q(`INSERT INTO devices (id, public_key, status, channel, tags, created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`,
      [d.id, d.publicKey, d.status, d.channel, json([...d.tags].sort()), d.createdAt]);
    return (r.rowCount ?? 0) > 0;
  }

  async replaceDeviceKey(id: string, expect: string | null, publicKey: string, at: number): Promise<boolean> {
    return this.tx(async (c) => {
      const r = (await this.q(`SELECT public_key FROM devices WHERE id = $1 FOR UPDATE`, [id], c)).rows[0];
      if (!r || (expect !== null && !samePem(String(r.public_key), expect))) return false;
      return ((await this.q(`UPDATE devices SET public_key = $1, key_changed_at = $2 WHERE id = $3`, [publicKey, at, id], c)).rowCount ?? 0) > 0;
    });
  }

  async listDevices(q: DeviceQuery): Promise<DeviceRow[]> {
    const where: string[] = [];
    const args: unknown[] = [];
    for (const [col, v] of [['status', q.status], ['channel', q.channel], ['board', q.board]] as const) {
      if (v) (args.push(v), where.push(`d.${col} = $${args.length}`));
    }
    const rows = (await this.q(`${DEVICE_SELECT} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY d.id`, args)).rows;
    const devices = rows.map(joinedDevice);
    return q.tag ? devices.filter((d) => d.tags.includes(q.tag!)) : devices;
  }

  async listRolloutCandidates(channel: string): Promise<RolloutCandidate[]> {
    return (await this.q(`SELECT id, board, tags, version FROM devices WHERE channel = $1 AND status = 'accepted' ORDER BY id`, [channel])).rows
      .map((r) => ({ id: String(r.id), board: str(r.board), tags: JSON.parse(String(r.tags)) as string[], version: str(r.version) }));
  }

  async setDeviceStatus(id: string, status: DeviceStatus): Promise<boolean> {
    return ((await this.q(`UPDATE devices SET status = $1 WHERE id = $2`, [status, id])).rowCount ?? 0) > 0;
  }

  async setDeviceTags(id: string, tags: string[]): Promise<boolean> {
    return ((await this.q(`UPDATE devices SET tags = $1 WHERE id = $2`, [json([...new Set(tags)].sort()), id])).rowCount ?? 0) > 0;
  }

  async setDeviceChannel(id: string, channel: string): Promise<boolean> {
    return ((await this.q(`UPDATE devices SET channel = $1 WHERE id = $2`, [channel, id])).rowCount ?? 0) > 0;
  }

  async recordCheckIn(id: string, u: CheckInUpdate): Promise<void> {
    await this.q(`UPDATE devices SET board = $1, version = $2, previous_version = COALESCE($3, previous_version), slot = $4, slot_state = $5, last_seen = $6 WHERE id = $7`,
      [u.board, u.version, u.previousVersion, u.slot, u.slotState ? json(u.slotState) : null, u.at, id]);
  }

  async recordReport(r: StoredReport, member: { rolloutId: string; state: MemberState } | null): Promise<boolean> {
    return this.tx(async (c) => {
      const inserted = ((await this.q(
        `INSERT INTO reports (device_id, id, state, version, running, slot, reason, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (device_id, id) DO NOTHING`,
        [r.deviceId, r.id, r.state, r.version, r.running, r.slot, r.reason, r.receivedAt], c,
      )).rowCount ?? 0) > 0;
      if (!inserted) return false;
      await this.q(`UPDATE devices SET last_report_id = $1, last_seen = $2,
        previous_version = CASE WHEN version IS NOT NULL AND version <> $3 THEN version ELSE previous_version END, version = $3, slot = $4 WHERE id = $5`,
        [r.id, r.receivedAt, r.running, r.slot, r.deviceId], c);
      if (member) {
        await this.q(`UPDATE rollout_members SET state = $1, updated_at = $2 WHERE rollout_id = $3 AND device_id = $4`,
          [member.state, r.receivedAt, member.rolloutId, r.deviceId], c);
      }
      return true;
    });
  }

  async listDeviceReports(deviceId: string, limit: number): Promise<StoredReport[]> {
    return (await this.q(`SELECT * FROM reports WHERE device_id = $1 ORDER BY received_at DESC, id DESC LIMIT $2`, [deviceId, limit])).rows.map(reportOf);
  }

  async listChannels(): Promise<ChannelRow[]> {
    return (await this.q(`SELECT * FROM channels ORDER BY name`)).rows.map((r) => ({ name: String(r.name), createdAt: Number(r.created_at) }));
  }

  async insertChannel(ch: ChannelRow): Promise<boolean> {
    return ((await this.q(`INSERT INTO channels (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, [ch.name, ch.createdAt])).rowCount ?? 0) > 0;
  }

  async listReleases(channel?: string): Promise<ReleaseRow[]> {
    const rows = channel
      ? (await this.q(`SELECT * FROM releases WHERE channel = $1 ORDER BY channel, created_at, version`, [channel])).rows
      : (await this.q(`SELECT * FROM releases ORDER BY channel, created_at, version`)).rows;
    return rows.map(releaseOf);
  }

  async getRelease(channel: string, version: string): Promise<ReleaseRow | null> {
    const r = (await this.q(`SELECT * FROM releases WHERE channel = $1 AND version = $2`, [channel, version])).rows[0];
    return r ? releaseOf(r) : null;
  }

  async insertRelease(r: ReleaseRow): Promise<boolean> {
    return ((await this.q(`INSERT INTO releases (channel, version, board, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (channel, version) DO NOTHING`,
      [r.channel, r.version, r.board, r.createdAt])).rowCount ?? 0) > 0;
  }

  async deleteRelease(channel: string, version: string): Promise<boolean> {
    return ((await this.q(`DELETE FROM releases WHERE channel = $1 AND version = $2`, [channel, version])).rowCount ?? 0) > 0;
  }

  async insertRollout(r: RolloutRow): Promise<void> {
    await this.q(`INSERT INTO rollouts (id, version, channel, filter, stages, max_failure_ratio, min_success_ratio, windows, state, stage, stage_started_at, reason, created_at)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
    [r.id, r.version, r.channel, json(r.filter), json(r.stages), r.maxFailureRatio, r.minSuccessRatio, windowsColumn(r.windows),
      r.state, r.stage, r.stageStartedAt, r.reason, r.createdAt]);
  }

  async getRollout(id: string): Promise<RolloutRow | null> {
    const r = (await this.q(`SELECT * FROM rollouts WHERE id = $1`, [id])).rows[0];
    return r ? rolloutOf(r) : null;
  }

  async listRollouts(q: { channel?: string; states?: RolloutState[] } = {}): Promise<RolloutRow[]> {
    return (await this.q(`SELECT * FROM rollouts WHERE ($1::text IS NULL OR channel = $1) AND ($2::text[] IS NULL OR state = ANY($2)) ORDER BY created_at, id`,
      [q.channel ?? null, q.states ?? null])).rows.map(rolloutOf);
  }

  async transitionRollout(id: string, expect: Pick<RolloutRow, 'state' | 'stage'>, patch: RolloutPatch, audit: Omit<AuditRow, 'seq'> | null): Promise<boolean> {
    const keys = Object.keys(patch).filter((k) => k in ROLLOUT_PATCH_COLUMNS) as Array<keyof RolloutPatch>;
    const sets = keys.map((k, i) => `${ROLLOUT_PATCH_COLUMNS[k]} = $${i + 4}`).join(', ') || 'id = id';
    return this.tx(async (c) => {
      const changed = ((await this.q(`UPDATE rollouts SET ${sets} WHERE id = $1 AND state = $2 AND stage = $3`,
        [id, expect.state, expect.stage, ...keys.map((k) => patch[k] ?? null)], c)).rowCount ?? 0) > 0;
      if (changed && audit) await this.audit(c, audit);
      return changed;
    });
  }

  async getMember(rolloutId: string, deviceId: string): Promise<MemberRow | null> {
    const r = (await this.q(`SELECT * FROM rollout_members WHERE rollout_id = $1 AND device_id = $2`, [rolloutId, deviceId])).rows[0];
    return r ? memberOf(r) : null;
  }

  async addMember(m: MemberRow): Promise<boolean> {
    return this.tx(async (c) => {
      // FOR SHARE conflicts with a transition's UPDATE: an offer either commits before a pause or sees it.
      const open = (await this.q(`SELECT 1 FROM rollouts WHERE id = $1 AND state IN ('running', 'completed') AND stage >= $2 FOR SHARE`,
        [m.rolloutId, m.stage], c)).rows.length > 0;
      if (!open) return false;
      await this.q(`INSERT INTO rollout_members (rollout_id, device_id, stage, state, updated_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (rollout_id, device_id) DO NOTHING`,
        [m.rolloutId, m.deviceId, m.stage, m.state, m.updatedAt], c);
      return true;
    });
  }

  async listMembers(rolloutId: string): Promise<MemberRow[]> {
    return (await this.q(`SELECT * FROM rollout_members WHERE rollout_id = $1 ORDER BY device_id`, [rolloutId])).rows.map(memberOf);
  }

  async memberCounts(rolloutId: string): Promise<MemberCounts> {
    return memberCountsOf((await this.q(`SELECT state, COUNT(*) AS n FROM rollout_members WHERE rollout_id = $1 GROUP BY state`, [rolloutId])).rows);
  }

  async findMembership(deviceId: string, version: string): Promise<MemberRow | null> {
    const r = (await this.q(`SELECT m.* FROM rollout_members m JOIN rollouts r ON r.id = m.rollout_id WHERE m.device_id = $1 AND r.version = $2
      ORDER BY r.created_at DESC, r.id DESC LIMIT 1`, [deviceId, version])).rows[0];
    return r ? memberOf(r) : null;
  }

  async insertAdminToken(t: AdminTokenRow & { hash: string }): Promise<void> {
    await this.q(`INSERT INTO admin_tokens (id, hash, name, scope, created_at) VALUES ($1, $2, $3, $4, $5)`, [t.id, t.hash, t.name, t.scope, t.createdAt]);
  }

  async insertFirstAdminToken(t: AdminTokenRow & { hash: string }): Promise<boolean> {
    return this.tx(async (c) => {
      await c.query(`SELECT pg_advisory_xact_lock(hashtext('edgekit-fleet:first-admin-token'))`);
      if (Number((await this.q(`SELECT COUNT(*) AS n FROM admin_tokens`, [], c)).rows[0].n) > 0) return false;
      await this.q(`INSERT INTO admin_tokens (id, hash, name, scope, created_at) VALUES ($1, $2, $3, $4, $5)`, [t.id, t.hash, t.name, t.scope, t.createdAt], c);
      return true;
    });
  }

  async findAdminToken(hash: string): Promise<AdminTokenRow | null> {
    const r = (await this.q(`SELECT * FROM admin_tokens WHERE hash = $1`, [hash])).rows[0];
    return r ? adminTokenOf(r) : null;
  }

  async listAdminTokens(): Promise<AdminTokenRow[]> {
    return (await this.q(`SELECT * FROM admin_tokens ORDER BY created_at, id`)).rows.map(adminTokenOf);
  }

  async countAdminTokens(): Promise<number> {
    return Number((await this.q(`SELECT COUNT(*) AS n FROM admin_tokens`)).rows[0].n);
  }

  async insertProvisioningToken(t: ProvisioningTokenRow & { hash: string }): Promise<void> {
    await this.q(`INSERT INTO provisioning_tokens (id, hash, channel, tags, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
      [t.id, t.hash, t.channel, json(t.tags), t.expiresAt, t.createdAt]);
  }

  async findProvisioningToken(hash: string): Promise<ProvisioningTokenRow | null> {
    const r = (await this.q(`SELECT * FROM provisioning_tokens WHERE hash = $1`, [hash])).rows[0];
    return r ? provisioningTokenOf(r) : null;
  }

  async consumeNonce(nonce: string, expiresAt: number): Promise<boolean> {
    return ((await this.q(`INSERT INTO used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING`, [nonce, expiresAt])).rowCount ?? 0) > 0;
  }

  async takeLease(name: string, holder: string, until: number, now: number): Promise<boolean> {
    const r = await this.q(`INSERT INTO leases (name, holder, until_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until_ms = EXCLUDED.until_ms
      WHERE leases.until_ms < $4 OR leases.holder = EXCLUDED.holder`, [name, holder, until, now]);
    return (r.rowCount ?? 0) > 0;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.q(`DELETE FROM leases WHERE name = $1 AND holder = $2`, [name, holder]);
  }

  async pruneReports(before: number, keepPerDevice: number): Promise<number> {
    return (await this.q(`DELETE FROM reports WHERE (device_id, id) IN (
      SELECT device_id, id FROM (
        SELECT device_id, id, received_at, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY received_at DESC, id DESC) AS n FROM reports
      ) ranked WHERE ranked.n > $1 AND ranked.received_at < $2)`, [keepPerDevice, before])).rowCount ?? 0;
  }

  async pruneNonces(before: number): Promise<void> {
    await this.q(`DELETE FROM used_nonces WHERE expires_at < $1`, [before]);
  }

  async appendAudit(a: Omit<AuditRow, 'seq'>): Promise<void> {
    await this.tx((c) => this.audit(c, a));
  }

  /** Gapless sequence numbers in commit order: the next number is taken under a lock held to commit. */
  private async audit(c: pg.PoolClient, a: Omit<AuditRow, 'seq'>): Promise<void> {
    await c.query(`SELECT pg_advisory_xact_lock(hashtext('edgekit-fleet:audit'))`);
    await this.q(`INSERT INTO audit (seq, at, actor, action, target, detail) SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5 FROM audit`,
      [a.at, a.actor, a.action, a.target, json(a.detail ?? null)], c);
  }

  async listAudit(limit: number): Promise<AuditRow[]> {
    return (await this.q(`SELECT * FROM audit ORDER BY seq DESC LIMIT $1`, [limit])).rows.map((r) => ({
      seq: Number(r.seq), at: Number(r.at), actor: String(r.actor), action: String(r.action), target: String(r.target), detail: JSON.parse(String(r.detail)) as unknown,
    }));
  }

  async deviceCountsByStatus(): Promise<Record<string, number>> {
    return Object.fromEntries((await this.q(`SELECT status, COUNT(*) AS n FROM devices GROUP BY status ORDER BY status`)).rows.map((r) => [String(r.status), Number(r.n)]));
  }

  async reportCountsByState(): Promise<Record<string, number>> {
    return Object.fromEntries((await this.q(`SELECT state, COUNT(*) AS n FROM reports GROUP BY state ORDER BY state`)).rows.map((r) => [String(r.state), Number(r.n)]));
  }
}

function joinedDevice(r: Row): DeviceRow {
  const report = r.r_id === null || r.r_id === undefined ? null : reportOf({
    id: r.r_id, device_id: r.id, state: r.r_state, version: r.r_version, running: r.r_running, slot: r.r_slot, reason: r.r_reason, received_at: r.r_received_at,
  });
  return deviceOf(r, report);
}

/** pg's connect errors can be an AggregateError with an empty message (one per address tried). */
function errorText(err: unknown): string {
  const e = err as Error & { errors?: Error[]; code?: string };
  return e.message || e.errors?.map((x) => x.message).join('; ') || e.code || String(err);
}
