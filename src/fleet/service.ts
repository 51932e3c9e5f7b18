/**
 * The fleet server's behaviour, independent of HTTP: device handshake, check-in, reports, and the
 * admin operations (each audited). Rollouts advance or pause themselves when a terminal report
 * arrives and on a periodic tick (for stage waits).
 */
import { randomBytes } from 'node:crypto';
import { checkSignature, DeviceTokens, DEVICE_TOKEN_SECONDS, hashToken, keyFingerprint, newSecretToken, NONCE_SECONDS, publicKeyProblem } from './auth.js';
import {
  rotateKeyMessage, type AuthRequest, type AuthResponse, type CheckInRequest, type CheckInResponse, type ReportRequest, type ReportResponse, type RotateKeyRequest,
  type RotateKeyResponse,
} from './protocol/messages.js';
import { decide, deviceBucket, matchesFilter, stageOfBucket, stagesProblem, type StageTally } from './rollout.js';
import type {
  AdminTokenRow, AuditRow, DeviceAccess, DeviceRow, FleetStore, MaintenanceWindow, MemberCounts, MemberState, RolloutFilter, RolloutRow, RolloutStage, Scope,
} from './store/store.js';
import { samePem } from './store/rows.js';
import { inWindow, windowProblem } from './windows.js';

export class FleetError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface Actor {
  tokenId: string;
  name: string;
  scope: Scope;
}

export interface RolloutStatus extends RolloutRow {
  counts: MemberCounts;
}

const REPORT_TO_MEMBER: Partial<Record<ReportRequest['state'], MemberState>> = {
  downloading: 'downloading',
  installing: 'installing',
  rebooting: 'rebooting',
  committed: 'succeeded',
  'rolled-back': 'failed',
  failed: 'failed',
};

export const DEFAULT_CHANNEL = 'stable';
/** Used nonces are kept this long past their expiry, so servers whose clocks differ by less still refuse a replay. */
const NONCE_KEEP_MS = (NONCE_SECONDS + 600) * 1000;

/** Each device's newest reports are kept whatever their age: its history and last report. */
export const REPORTS_KEPT_PER_DEVICE = 20;
/** Old reports are looked for at most this often (a scan of the reports table). */
const REPORT_PRUNE_EVERY_MS = 3600_000;

export interface FleetServiceOptions {
  /**
   * Delete device reports older than this (ms), each device's newest REPORTS_KEPT_PER_DEVICE
   * excepted; unset: keep every report. A report is recognised as a replay only while it is kept.
   */
  keepReportsMs?: number;
}

export class FleetService {
  private lastReportPrune = -Infinity;

  private constructor(
    readonly store: FleetStore,
    readonly tokens: DeviceTokens,
    private readonly now: () => number,
    private readonly options: FleetServiceOptions,
  ) {}

  static async open(store: FleetStore, now: () => number = Date.now, options: FleetServiceOptions = {}): Promise<FleetService> {
    await store.migrate();
    const secret = await store.initSetting('device-token-secret', randomBytes(32).toString('base64'));
    await store.insertChannel({ name: DEFAULT_CHANNEL, createdAt: now() });
    return new FleetService(store, new DeviceTokens(Buffer.from(secret, 'base64'), now), now, options);
  }

  /**
   * Creates the first admin token when there is none. `keep` saves it for the operator before it is
   * stored (so a token that could not be saved never locks anyone out); it answers false when another
   * server got there first (then nothing is stored). Returns the token or null when there was one
   * already. Several servers may start at once on an empty database: the store lets one of them
   * win, and the others' `discard` undoes their `keep`.
   */
  async bootstrapAdminToken(keep: (token: string) => Promise<boolean>, discard: () => Promise<void>): Promise<string | null> {
    if ((await this.store.countAdminTokens()) > 0) return null;
    const { token, row, hash } = this.newAdminToken('bootstrap', 'admin');
    if (!(await keep(token))) return null;
    if (!(await this.store.insertFirstAdminToken({ ...row, hash }))) {
      await discard();
      return null;
    }
    await this.audit(null, 'token.create', row.id, { name: row.name, scope: row.scope });
    return token;
  }

  // ---- devices ----

  hello(deviceId: string): string {
    return this.tokens.issueNonce(deviceId);
  }

  async authenticate(req: AuthRequest): Promise<AuthResponse> {
    const check = await this.tokens.verifyHandshake(req.deviceId, req.nonce, req.publicKey, req.signature, (n, e) => this.store.consumeNonce(n, e));
    if (check === 'bad-nonce') throw new FleetError(401, 'unknown, used or expired nonce: ask /v1/device/hello again');
    if (check === 'bad-key') throw new FleetError(400, 'publicKey: not an ed25519 public key (SPKI PEM)');
    if (check === 'bad-signature') throw new FleetError(401, 'signature does not verify with the given public key');
    let device = await this.store.getDevice(req.deviceId);
    if (!device) {
      const prov = req.provisioningToken ? await this.store.findProvisioningToken(hashToken(req.provisioningToken)) : null;
      const valid = prov && (prov.expiresAt === null || prov.expiresAt > this.now());
      await this.store.insertDevice({
        id: req.deviceId, publicKey: req.publicKey, status: valid ? 'accepted' : 'pending', channel: valid ? prov.channel : DEFAULT_CHANNEL,
        tags: valid ? prov.tags : [], createdAt: this.now(),
      });
      // Another server may have registered the id meanwhile (insertDevice then changes nothing): the stored key decides.
      device = (await this.store.getDevice(req.deviceId))!;
    }
    if (!samePem(device.publicKey, req.publicKey)) {
      throw new FleetError(403, `device ${req.deviceId} is registered with another key`);
    }
    if (device.status === 'rejected') throw new FleetError(403, `device ${req.deviceId} was rejected by an operator`);
    if (device.status === 'pending') return { status: 'pending' };
    return { status: 'accepted', token: this.tokens.issueToken(device.id), expiresIn: DEVICE_TOKEN_SECONDS };
  }

  /**
   * Key rotation asked for by the device (see protocol/messages.ts): the old key authorises the
   * change, the new key proves possession; both sign one message bound to a fresh nonce.
   */
  async rotateKey(req: RotateKeyRequest): Promise<RotateKeyResponse> {
    if (!(await this.tokens.useNonce(req.deviceId, req.nonce, (n, e) => this.store.consumeNonce(n, e)))) {
      throw new FleetError(401, 'unknown, used or expired nonce: ask /v1/device/hello again');
    }
    const message = rotateKeyMessage(req.deviceId, req.nonce, req.newPublicKey);
    const byNew = checkSignature(req.newPublicKey, message, req.newSignature);
    if (byNew === 'bad-key') throw new FleetError(400, 'newPublicKey: not an ed25519 public key (SPKI PEM)');
    if (byNew === 'bad-signature') throw new FleetError(401, 'newSignature does not verify with newPublicKey');
    const device = await this.store.getDevice(req.deviceId);
    if (!device) throw new FleetError(404, `no device ${req.deviceId}: a key is rotated once the device has registered`);
    if (device.status === 'rejected') throw new FleetError(403, `device ${req.deviceId} was rejected by an operator`);
    // Already done (the device did not hear the answer and asks again): the new key has signed, nothing to change.
    if (samePem(device.publicKey, req.newPublicKey)) return { status: 'rotated' };
    if (!samePem(device.publicKey, req.publicKey)) throw new FleetError(403, `device ${req.deviceId} is registered with another key`);
    const byOld = checkSignature(req.publicKey, message, req.signature);
    if (byOld !== 'ok') throw new FleetError(byOld === 'bad-key' ? 400 : 401, byOld === 'bad-key' ? 'publicKey: not an ed25519 public key (SPKI PEM)' : 'signature does not verify with publicKey');
    if (!(await this.store.replaceDeviceKey(req.deviceId, req.publicKey, req.newPublicKey, this.now()))) {
      throw new FleetError(409, `device ${req.deviceId}: its key changed meanwhile; authenticate again`);
    }
    await this.audit(`device ${req.deviceId}`, 'device.key-rotate', req.deviceId, { from: keyFingerprint(req.publicKey), to: keyFingerprint(req.newPublicKey) });
    return { status: 'rotated' };
  }

  /** An operator registers a device by its public key: accepted at its first handshake, no token needed. */
  async registerDevice(actor: Actor, o: { id: string; publicKey: string; channel: string; tags: string[] }): Promise<DeviceRow> {
    const problem = publicKeyProblem(o.publicKey);
    if (problem) throw new FleetError(400, `publicKey: ${problem}`);
    await this.requireChannel(o.channel);
    const tags = [...new Set(o.tags)].sort();
    if (!(await this.store.insertDevice({ id: o.id, publicKey: o.publicKey, status: 'accepted', channel: o.channel, tags, createdAt: this.now() }))) {
      throw new FleetError(409, `device ${o.id} exists: set its key with PUT /v1/admin/devices/${o.id}/key`);
    }
    await this.audit(actor, 'device.register', o.id, { channel: o.channel, tags, key: keyFingerprint(o.publicKey) });
    return this.requireDevice(o.id);
  }

  /**
   * An operator replaces a device's key (it lost its key, the board was replaced, the key leaked).
   * Tokens issued before are refused from now on; the status is left as it is.
   */
  async setDeviceKey(actor: Actor, id: string, publicKey: string): Promise<DeviceRow> {
    const problem = publicKeyProblem(publicKey);
    if (problem) throw new FleetError(400, `publicKey: ${problem}`);
    const before = await this.requireDevice(id);
    if (!(await this.store.replaceDeviceKey(id, null, publicKey, this.now()))) throw new FleetError(404, `no device ${id}`);
    await this.audit(actor, 'device.key-set', id, { from: fingerprintOrNull(before.publicKey), to: keyFingerprint(publicKey) });
    return this.requireDevice(id);
  }

  /**
   * The device a bearer token stands for; 401 for a bad token or one issued before the device's
   * key was replaced (whoever held the old key must not keep acting), 403 for a device no longer accepted.
   */
  async deviceOf(token: string | null): Promise<DeviceAccess> {
    const holder = token ? this.tokens.checkToken(token) : null;
    if (!holder) throw new FleetError(401, token ? 'invalid or expired device token' : 'missing device token (Authorization: Bearer)');
    const device = await this.store.getDeviceAccess(holder.deviceId);
    if (!device || device.status !== 'accepted') throw new FleetError(403, `device ${holder.deviceId} is not accepted`);
    // Tokens carry their time to the second: one issued in the same second as the change still passes.
    if (device.keyChangedAt !== null && holder.issuedAt < Math.floor(device.keyChangedAt / 1000) * 1000) {
      throw new FleetError(401, `device token issued before device ${device.id}'s key changed: authenticate again`);
    }
    return device;
  }

  async checkIn(device: DeviceAccess, req: CheckInRequest): Promise<CheckInResponse> {
    await this.store.recordCheckIn(device.id, {
      board: req.board, version: req.version, previousVersion: req.previousVersion ?? null, slot: req.slot, slotState: req.slotState ?? null, at: this.now(),
    });
    const rollouts = (await this.store.listRollouts({ channel: device.channel, states: ['running', 'completed'] })).reverse();
    for (const r of rollouts) {
      if (req.version === r.version) return { release: null };
      if (!matchesFilter(r.filter, { board: req.board, tags: device.tags })) continue;
      const member = await this.store.getMember(r.id, device.id);
      // Outside the rollout's maintenance windows nobody starts; a device that already started finishes.
      const open = inWindow(r.windows, this.now());
      if (member) {
        if (member.state === 'failed' || member.state === 'succeeded') return { release: null };
        if (!open && member.state === 'offered') return { release: null };
      } else {
        const stage = stageOfBucket(r.stages, deviceBucket(r.id, device.id));
        if (stage > r.stage) continue;
        if (!open) return { release: null };
        // False when another server paused or aborted the rollout since it was read.
        if (!(await this.store.addMember({ rolloutId: r.id, deviceId: device.id, stage, state: 'offered', updatedAt: this.now() }))) continue;
      }
      return { release: { version: r.version, channel: r.channel, rolloutId: r.id } };
    }
    return { release: null };
  }

  async report(device: DeviceAccess, req: ReportRequest): Promise<ReportResponse> {
    // A failure counts once the device ran the release (its health checks failed on the new slot,
    // or it fell back). 'failed' while still running another version is a download or install that
    // stopped before the switch: the device stays a member in progress and is offered it again.
    const memberState = req.state === 'failed' && req.running !== req.version ? undefined : REPORT_TO_MEMBER[req.state];
    const member = memberState && req.version ? await this.store.findMembership(device.id, req.version) : null;
    const inserted = await this.store.recordReport(
      { id: req.id, deviceId: device.id, state: req.state, version: req.version ?? null, running: req.running, slot: req.slot, reason: req.reason ?? null, receivedAt: this.now() },
      member && memberState ? { rolloutId: member.rolloutId, state: memberState } : null,
    );
    if (inserted && member && (memberState === 'succeeded' || memberState === 'failed')) await this.evaluate(member.rolloutId);
    return { duplicate: !inserted };
  }

  // ---- rollouts ----

  /**
   * Applies what the rollout's counts call for, repeatedly (a stage with no wait can open the next at
   * once). Every server judges rollouts (on reports and on its tick); each transition is a
   * compare-and-set on the state and stage read, so it happens once, and it is audited with it.
   */
  async evaluate(rolloutId: string): Promise<void> {
    for (let guard = 0; guard < 100; guard++) {
      const r = await this.store.getRollout(rolloutId);
      if (!r) return;
      const d = decide(r, await this.tally(r), this.now());
      if (d.kind === 'none') return;
      const was = { state: r.state, stage: r.stage };
      const moved = d.kind === 'pause'
        ? await this.store.transitionRollout(r.id, was, { state: 'paused', reason: d.reason }, this.auditEntry(null, 'rollout.auto-pause', r.id, { stage: r.stage, reason: d.reason }))
        : d.kind === 'complete'
          ? await this.store.transitionRollout(r.id, was, { state: 'completed', reason: null }, this.auditEntry(null, 'rollout.complete', r.id, { stage: r.stage }))
          : await this.store.transitionRollout(r.id, was, { stage: d.stage, stageStartedAt: this.now() }, this.auditEntry(null, 'rollout.advance', r.id, { stage: d.stage }));
      // Not moved: another server got there first; judge again from what is stored now.
      if (moved && d.kind !== 'advance') return;
    }
  }

  async tick(): Promise<void> {
    await this.store.pruneNonces(this.now() - NONCE_KEEP_MS);
    if (this.options.keepReportsMs !== undefined && this.now() - this.lastReportPrune >= REPORT_PRUNE_EVERY_MS) {
      this.lastReportPrune = this.now();
      await this.store.pruneReports(this.now() - this.options.keepReportsMs, REPORTS_KEPT_PER_DEVICE);
    }
    for (const r of await this.store.listRollouts({ states: ['running'] })) await this.evaluate(r.id);
  }

  private async tally(r: RolloutRow): Promise<StageTally> {
    const members = new Map((await this.store.listMembers(r.id)).map((m) => [m.deviceId, m]));
    const t: StageTally = { population: 0, succeeded: 0, failed: 0 };
    for (const d of await this.store.listRolloutCandidates(r.channel)) {
      if (!matchesFilter(r.filter, d)) continue;
      const m = members.get(d.id);
      const stage = m ? m.stage : stageOfBucket(r.stages, deviceBucket(r.id, d.id));
      if (stage > r.stage) continue;
      t.population++;
      if (m?.state === 'succeeded' || (!m && d.version === r.version)) t.succeeded++;
      else if (m?.state === 'failed') t.failed++;
    }
    return t;
  }

  async rolloutStatus(id: string): Promise<RolloutStatus> {
    const r = await this.store.getRollout(id);
    if (!r) throw new FleetError(404, `no rollout ${id}`);
    return { ...r, counts: await this.store.memberCounts(id) };
  }

  async listRollouts(): Promise<RolloutStatus[]> {
    return Promise.all((await this.store.listRollouts()).map(async (r) => ({ ...r, counts: await this.store.memberCounts(r.id) })));
  }

  async createRollout(
    actor: Actor,
    o: {
      version: string; channel: string; filter?: Partial<RolloutFilter>; stages: RolloutStage[]; maxFailureRatio: number; minSuccessRatio: number;
      windows?: MaintenanceWindow[];
    },
  ): Promise<RolloutStatus> {
    const problem = stagesProblem(o.stages);
    if (problem) throw new FleetError(400, `stages: ${problem}`);
    const windows = o.windows ?? [];
    for (const [i, w] of windows.entries()) {
      const p = windowProblem(w);
      if (p) throw new FleetError(400, `windows.${i}: ${p}`);
    }
    if (!(await this.store.getRelease(o.channel, o.version))) throw new FleetError(404, `no release ${o.version} in channel ${o.channel}`);
    const active = await this.store.listRollouts({ channel: o.channel, states: ['running', 'paused'] });
    if (active.length) throw new FleetError(409, `channel ${o.channel} already has rollout ${active[0].id} (${active[0].state}): abort it first`);
    const r: RolloutRow = {
      id: `ro_${randomBytes(6).toString('hex')}`, version: o.version, channel: o.channel,
      filter: { tags: [...new Set(o.filter?.tags ?? [])].sort(), board: o.filter?.board ?? null },
      stages: o.stages, maxFailureRatio: o.maxFailureRatio, minSuccessRatio: o.minSuccessRatio, windows,
      state: 'running', stage: 0, stageStartedAt: this.now(), reason: null, createdAt: this.now(),
    };
    await this.store.insertRollout(r);
    await this.audit(actor, 'rollout.create', r.id, { version: r.version, channel: r.channel, filter: r.filter, stages: r.stages, windows });
    return this.rolloutStatus(r.id);
  }

  async setRolloutState(actor: Actor, id: string, action: 'pause' | 'resume' | 'abort'): Promise<RolloutStatus> {
    const allowed: Record<typeof action, string[]> = { pause: ['running'], resume: ['paused'], abort: ['running', 'paused'] };
    const state = action === 'pause' ? 'paused' : action === 'resume' ? 'running' : 'aborted';
    // Read, check, compare-and-set: a stage advance or pause by a server in between means reading again.
    for (;;) {
      const r = await this.store.getRollout(id);
      if (!r) throw new FleetError(404, `no rollout ${id}`);
      if (!allowed[action].includes(r.state)) throw new FleetError(409, `rollout ${id} is ${r.state}: cannot ${action}`);
      const patch = { state, reason: action === 'resume' ? null : `${state} by ${actor.name}` } as const;
      if (await this.store.transitionRollout(id, { state: r.state, stage: r.stage }, patch, this.auditEntry(actor, `rollout.${action}`, id, null))) break;
    }
    // A resumed rollout is judged again at once: one whose failures still exceed the limit pauses again.
    if (action === 'resume') await this.evaluate(id);
    return this.rolloutStatus(id);
  }

  /**
   * Takes a release off a channel's list (after it was withdrawn from the repository, or added by
   * mistake). Refused while a running or paused rollout offers it: abort that first.
   */
  async removeRelease(actor: Actor, channel: string, version: string): Promise<void> {
    if (!(await this.store.getRelease(channel, version))) throw new FleetError(404, `no release ${version} in channel ${channel}`);
    const live = (await this.store.listRollouts({ channel, states: ['running', 'paused'] })).find((r) => r.version === version);
    if (live) throw new FleetError(409, `rollout ${live.id} (${live.state}) offers ${version} in channel ${channel}: abort it first`);
    await this.store.deleteRelease(channel, version);
    await this.audit(actor, 'release.remove', `${channel}/${version}`, null);
  }

  // ---- admin ----

  async audit(actor: Actor | string | null, action: string, target: string, detail: unknown): Promise<void> {
    await this.store.appendAudit(this.auditEntry(actor, action, target, detail));
  }

  /**
   * An audit entry. The actor: an admin token, a device (by name, e.g. 'device gw-1' for a key
   * rotation), or none: the server did it by itself (e.g. a rollout's automatic stage advance).
   */
  private auditEntry(actor: Actor | string | null, action: string, target: string, detail: unknown): Omit<AuditRow, 'seq'> {
    return { at: this.now(), actor: typeof actor === 'string' ? actor : actor ? `${actor.name} (${actor.tokenId})` : 'server', action, target, detail };
  }

  async adminOf(token: string | null): Promise<Actor> {
    if (!token) throw new FleetError(401, 'missing admin token (Authorization: Bearer)');
    const row = await this.store.findAdminToken(hashToken(token));
    if (!row) throw new FleetError(401, 'invalid admin token');
    return { tokenId: row.id, name: row.name, scope: row.scope };
  }

  async createAdminToken(actor: Actor | null, name: string, scope: Scope): Promise<{ token: string } & AdminTokenRow> {
    const { token, row, hash } = this.newAdminToken(name, scope);
    await this.store.insertAdminToken({ ...row, hash });
    await this.audit(actor, 'token.create', row.id, { name, scope });
    return { token, ...row };
  }

  private newAdminToken(name: string, scope: Scope): { token: string; row: AdminTokenRow; hash: string } {
    const token = newSecretToken('adm');
    return { token, row: { id: `tok_${randomBytes(6).toString('hex')}`, name, scope, createdAt: this.now() }, hash: hashToken(token) };
  }

  async createProvisioningToken(actor: Actor, o: { channel: string; tags: string[]; expiresInSeconds: number | null }): Promise<{ token: string; id: string }> {
    await this.requireChannel(o.channel);
    const token = newSecretToken('prov');
    const id = `prov_${randomBytes(6).toString('hex')}`;
    const expiresAt = o.expiresInSeconds === null ? null : this.now() + o.expiresInSeconds * 1000;
    await this.store.insertProvisioningToken({ id, hash: hashToken(token), channel: o.channel, tags: [...new Set(o.tags)].sort(), expiresAt, createdAt: this.now() });
    await this.audit(actor, 'provisioning-token.create', id, { channel: o.channel, tags: o.tags, expiresAt });
    return { token, id };
  }

  async requireChannel(name: string): Promise<void> {
    if (!(await this.store.listChannels()).some((c) => c.name === name)) throw new FleetError(404, `no channel ${name}`);
  }

  async requireDevice(id: string): Promise<DeviceRow> {
    const d = await this.store.getDevice(id);
    if (!d) throw new FleetError(404, `no device ${id}`);
    return d;
  }
}

/** Keys stored before they were checked (none should be) still get an audit entry. */
function fingerprintOrNull(pem: string): string | null {
  try {
    return keyFingerprint(pem);
  } catch {
    return null;
  }
}
