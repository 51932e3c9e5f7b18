/**
 * The schema, as numbered steps applied in order on start. Plain DDL that SQLite and PostgreSQL
 * both accept (TEXT, BIGINT, DOUBLE PRECISION, composite primary keys); JSON is stored as TEXT.
 * Never edit a step that has shipped: add the next one.
 */
export const MIGRATIONS: string[][] = [
  [
    `CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)`,
    `CREATE TABLE devices (
      id TEXT PRIMARY KEY, public_key TEXT NOT NULL, status TEXT NOT NULL, board TEXT, channel TEXT NOT NULL,
      tags TEXT NOT NULL, version TEXT, previous_version TEXT, slot TEXT, slot_state TEXT,
      last_seen BIGINT, last_report_id TEXT, created_at BIGINT NOT NULL)`,
    `CREATE TABLE reports (
      device_id TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, version TEXT, running TEXT NOT NULL,
      slot TEXT NOT NULL, reason TEXT, received_at BIGINT NOT NULL, PRIMARY KEY (device_id, id))`,
    `CREATE TABLE channels (name TEXT PRIMARY KEY, created_at BIGINT NOT NULL)`,
    `CREATE TABLE releases (
      channel TEXT NOT NULL, version TEXT NOT NULL, board TEXT, created_at BIGINT NOT NULL, PRIMARY KEY (channel, version))`,
    `CREATE TABLE rollouts (
      id TEXT PRIMARY KEY, version TEXT NOT NULL, channel TEXT NOT NULL, filter TEXT NOT NULL, stages TEXT NOT NULL,
      max_failure_ratio DOUBLE PRECISION NOT NULL, min_success_ratio DOUBLE PRECISION NOT NULL, state TEXT NOT NULL,
      stage BIGINT NOT NULL, stage_started_at BIGINT NOT NULL, reason TEXT, created_at BIGINT NOT NULL)`,
    `CREATE TABLE rollout_members (
      rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, stage BIGINT NOT NULL, state TEXT NOT NULL,
      updated_at BIGINT NOT NULL, PRIMARY KEY (rollout_id, device_id))`,
    `CREATE INDEX rollout_members_device ON rollout_members (device_id)`,
    `CREATE TABLE admin_tokens (
      id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL, scope TEXT NOT NULL, created_at BIGINT NOT NULL)`,
    `CREATE TABLE provisioning_tokens (
      id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, channel TEXT NOT NULL, tags TEXT NOT NULL, expires_at BIGINT,
      created_at BIGINT NOT NULL)`,
    `CREATE TABLE audit (
      seq BIGINT PRIMARY KEY, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
      detail TEXT NOT NULL)`,
  ],
  // 2: handshake nonces already presented: any server checks a nonce's signature, this table makes it
  // single-use across servers.
  [
    `CREATE TABLE used_nonces (nonce TEXT PRIMARY KEY, expires_at BIGINT NOT NULL)`,
    `CREATE INDEX used_nonces_expiry ON used_nonces (expires_at)`,
  ],
  // 3: maintenance windows of a rollout (JSON list of {start, end, days?}; NULL: any time), and the
  // index that lists a device's reports newest first for its history.
  [
    `ALTER TABLE rollouts ADD COLUMN windows TEXT`,
    `CREATE INDEX reports_device_time ON reports (device_id, received_at)`,
  ],
  // 4: when a device's key was last replaced (rotated by the device or set by an operator; unix ms,
  // NULL: never). Device tokens issued before then are refused.
  [`ALTER TABLE devices ADD COLUMN key_changed_at BIGINT`],
  // 5: leases, so that of several servers sharing the database one does a job at a time (re-signing
  // the repository's snapshot and timestamp).
  [`CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, until_ms BIGINT NOT NULL)`],
];
