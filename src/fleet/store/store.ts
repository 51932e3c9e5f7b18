/**
 * What the fleet server keeps, behind one interface. Each method is one whole domain operation
 * (it runs in one transaction inside the store), so the engine holds no SQL and no transaction
 * handles: the SQLite and PostgreSQL stores implement the same methods with their own SQL. Every
 * method is async for that reason, even though the SQLite one answers synchronously. Nothing a
 * request depends on lives in a server's memory, so several servers can share one PostgreSQL
 * database and any of them can answer any request.
 */

export type DeviceStatus = 'pending' | 'accepted' | 'rejected';
export type Scope = 'read' | 'operator' | 'admin';
export type RolloutState = 'running' | 'paused' | 'aborted' | 'completed';
/** A device's progress in one rollout. */
export type MemberState = 'offered' | 'downloading' | 'installing' | 'rebooting' | 'succeeded' | 'failed';

export interface DeviceRow {
  id: string;
  publicKey: string;
  status: DeviceStatus;
  board: string | null;
  channel: string;
  tags: string[];
  version: string | null;
  previousVersion: string | null;
  slot: string | null;
  slotState: Record<string, string> | null;
  /** Unix milliseconds. */
  lastSeen: number | null;
  lastReport: StoredReport | null;
  createdAt: number;
  /** When the key was last replaced (unix ms); null: the device still has the key it registered with. */
  keyChangedAt: number | null;
}

/** What a device's own requests need of its row (its token names the device). */
export type DeviceAccess = Pick<DeviceRow, 'id' | 'status' | 'channel' | 'tags' | 'keyChangedAt'>;

export interface StoredReport {
  id: string;
  deviceId: string;
  state: string;
  version: string | null;
  running: string;
  slot: string;
  reason: string | null;
  receivedAt: number;
}

export interface ChannelRow {
  name: string;
  createdAt: number;
}

export interface ReleaseRow {
  version: string;
  channel: string;
  /** null: any board. */
  board: string | null;
  createdAt: number;
}

export interface RolloutStage {
  /** Share of the matching devices, 0 < percent <= 100; stages increase. */
  percent: number;
  /** Seconds the previous stage must have run before this one starts. */
  waitSeconds: number;
}

export interface RolloutFilter {
  /** A device must carry every one of these tags. */
  tags: string[];
  board: string | null;
}

export type Weekday = 'mon' | 'tue' | 'wed' | 'thu' | 'fri' | 'sat' | 'sun';

/** A time range in which devices may be offered a rollout's release. */
export interface MaintenanceWindow {
  /** 'HH:MM' in the window's time zone. */
  start: string;
  /** 'HH:MM' (up to 24:00); earlier than start: the window runs past midnight into the next day. */
  end: string;
  /** The days (in the window's time zone) the window starts on; empty: every day. */
  days: Weekday[];
  /** An IANA time zone name (e.g. Europe/Berlin); UTC when absent. */
  timeZone?: string;
}

export interface RolloutRow {
  id: string;
  version: string;
  channel: string;
  filter: RolloutFilter;
  stages: RolloutStage[];
  /** Failed devices / devices in the stages so far above which the rollout pauses itself. */
  maxFailureRatio: number;
  /** Succeeded devices / devices in the stages so far a stage needs before the next starts. */
  minSuccessRatio: number;
  /** Devices are offered the release only inside one of these; empty: any time. */
  windows: MaintenanceWindow[];
  state: RolloutState;
  /** Index into stages of the stage now open. */
  stage: number;
  stageStartedAt: number;
  reason: string | null;
  createdAt: number;
}

export interface MemberRow {
  rolloutId: string;
  deviceId: string;
  /** The stage index the device was offered the release in. */
  stage: number;
  state: MemberState;
  updatedAt: number;
}

export interface MemberCounts {
  offered: number;
  inProgress: number;
  succeeded: number;
  failed: number;
}

export interface AdminTokenRow {
  id: string;
  name: string;
  scope: Scope;
  createdAt: number;
}

export interface ProvisioningTokenRow {
  id: string;
  channel: string;
  tags: string[];
  expiresAt: number | null;
  createdAt: number;
}

export interface AuditRow {
  seq: number;
  at: number;
  actor: string;
  action: string;
  target: string;
  detail: unknown;
}

export interface DeviceQuery {
  status?: DeviceStatus;
  channel?: string;
  board?: string;
  tag?: string;
}

export interface RolloutCandidate {
  id: string;
  board: string | null;
  tags: string[];
  version: string | null;
}

export interface CheckInUpdate {
  board: string;
  version: string;
  previousVersion: string | null;
  slot: string;
  slotState: Record<string, string> | null;
  at: number;
}

export type RolloutPatch = Partial<Pick<RolloutRow, 'state' | 'stage' | 'stageStartedAt' | 'reason'>>;

export interface FleetStore {
  /** Apply pending schema migrations; returns the schema version now in place. */
  migrate(): Promise<number>;
  close(): Promise<void>;

  getSetting(key: string): Promise<string | null>;
  /** Sets the value only if none is there; returns the value in place afterwards. */
  initSetting(key: string, value: string): Promise<string>;

  getDevice(id: string): Promise<DeviceRow | null>;
  /** The few fields a device's request needs, read on every check-in (the whole inventory row is not). */
  getDeviceAccess(id: string): Promise<DeviceAccess | null>;
  /** No-op when the id is taken (another server registered it first); true when this call inserted it. */
  insertDevice(d: Pick<DeviceRow, 'id' | 'publicKey' | 'status' | 'channel' | 'tags' | 'createdAt'>): Promise<boolean>;
  /**
   * Replaces the device's public key and sets keyChangedAt to `at`. Compare-and-set when `expect`
   * is given: only while the stored key is still that one (normalised PEM), so two rotations racing
   * on different servers cannot both win. False when the device is unknown or its key differs.
   */
  replaceDeviceKey(id: string, expect: string | null, publicKey: string, at: number): Promise<boolean>;
  listDevices(q: DeviceQuery): Promise<DeviceRow[]>;
  /** The few fields rollout membership needs, for every accepted device of a channel. */
  listRolloutCandidates(channel: string): Promise<RolloutCandidate[]>;
  setDeviceStatus(id: string, status: DeviceStatus): Promise<boolean>;
  setDeviceTags(id: string, tags: string[]): Promise<boolean>;
  setDeviceChannel(id: string, channel: string): Promise<boolean>;
  recordCheckIn(id: string, u: CheckInUpdate): Promise<void>;
  /**
   * Stores the report unless (deviceId, report id) is known, updates the device's last report and,
   * when `member` is given, that rollout membership's state. Returns false for a duplicate (nothing changed).
   */
  recordReport(r: StoredReport, member: { rolloutId: string; state: MemberState } | null): Promise<boolean>;
  /** A device's reports, newest first (by receipt), at most `limit`. */
  listDeviceReports(deviceId: string, limit: number): Promise<StoredReport[]>;
  /**
   * Deletes reports received before `before`, except each device's newest `keepPerDevice` (its
   * history and last report stay readable however long it has been quiet). Returns how many went.
   */
  pruneReports(before: number, keepPerDevice: number): Promise<number>;

  listChannels(): Promise<ChannelRow[]>;
  insertChannel(c: ChannelRow): Promise<boolean>;
  listReleases(channel?: string): Promise<ReleaseRow[]>;
  getRelease(channel: string, version: string): Promise<ReleaseRow | null>;
  insertRelease(r: ReleaseRow): Promise<boolean>;
  /** False when the channel has no such release. */
  deleteRelease(channel: string, version: string): Promise<boolean>;

  insertRollout(r: RolloutRow): Promise<void>;
  getRollout(id: string): Promise<RolloutRow | null>;
  listRollouts(q?: { channel?: string; states?: RolloutState[] }): Promise<RolloutRow[]>;
  /**
   * Compare-and-set: applies the patch (and appends the audit entry, in the same transaction) only
   * while the rollout is still in `expect`'s state and stage. Returns false when it was not (another
   * server or request moved it first): several servers judge the same rollout, and each transition
   * must happen once.
   */
  transitionRollout(id: string, expect: Pick<RolloutRow, 'state' | 'stage'>, patch: RolloutPatch, audit: Omit<AuditRow, 'seq'> | null): Promise<boolean>;
  getMember(rolloutId: string, deviceId: string): Promise<MemberRow | null>;
  /**
   * Records that the device was offered the release in `m.stage`, only while the rollout offers it:
   * running or completed with stage `m.stage` open (checked under a lock on the rollout, so an offer
   * never lands after a concurrent pause or abort). True when the device is a member afterwards
   * (now or before), false when the rollout no longer offers that stage.
   */
  addMember(m: MemberRow): Promise<boolean>;
  listMembers(rolloutId: string): Promise<MemberRow[]>;
  memberCounts(rolloutId: string): Promise<MemberCounts>;
  /** Latest membership of a device in any rollout of this version (to find the rollout a report belongs to). */
  findMembership(deviceId: string, version: string): Promise<MemberRow | null>;

  insertAdminToken(t: AdminTokenRow & { hash: string }): Promise<void>;
  /** Inserts the token only when there is no admin token at all (atomic: one of several starting servers wins). */
  insertFirstAdminToken(t: AdminTokenRow & { hash: string }): Promise<boolean>;
  findAdminToken(hash: string): Promise<AdminTokenRow | null>;
  listAdminTokens(): Promise<AdminTokenRow[]>;
  countAdminTokens(): Promise<number>;
  insertProvisioningToken(t: ProvisioningTokenRow & { hash: string }): Promise<void>;
  findProvisioningToken(hash: string): Promise<ProvisioningTokenRow | null>;

  /**
   * Marks a handshake nonce used (nonces are stateless and signed, so any server can check one; this
   * is what makes each one single-use across servers). False when it was used before.
   */
  consumeNonce(nonce: string, expiresAt: number): Promise<boolean>;
  /** Forgets used nonces that expired before `before` (they can no longer be presented). */
  pruneNonces(before: number): Promise<void>;

  /**
   * Takes or renews the lease `name` for `holder` until `until` (unix ms): true when it is free,
   * expired (before `now`) or already this holder's; false while another holder has it.
   */
  takeLease(name: string, holder: string, until: number, now: number): Promise<boolean>;
  /** Gives the lease `name` up if `holder` has it, so another holder need not wait for it to expire. */
  releaseLease(name: string, holder: string): Promise<void>;

  /** Audit entries get consecutive sequence numbers in commit order. */
  appendAudit(a: Omit<AuditRow, 'seq'>): Promise<void>;
  listAudit(limit: number): Promise<AuditRow[]>;

  /** Counts for /metrics. */
  deviceCountsByStatus(): Promise<Record<string, number>>;
  reportCountsByState(): Promise<Record<string, number>>;
}
