/**
 * The agent managed by a fleet server (`edgekit serve`), through the fleet protocol's device
 * client (src/fleet/protocol/client.ts, the module the fleet simulations use too):
 *
 *   identity   the device's key pair and id (device-identity.ts); the provisioning token from the
 *              config partition is presented until the server has accepted the device once
 *   check-in   running version, slot, the boot chain's view of the slots, board; the answer names
 *              the release to install (or none) and where the signed repository is
 *   install    the offered release goes through the same verified path as in static mode: the
 *              metadata client refreshes from that repository with the image's trusted root and
 *              accepts only that version, signed for this board and image and newer than the
 *              running one. The server's word alone installs nothing.
 *   reports    queued on /data (report-queue.ts) and delivered in order, at once when the server
 *              answers, else before the next check-in
 *   key        a key rotation under way (`edgekit identity --rotate`, or the key is older than
 *              fleet.keyRotationDays) is finished before the check-in (device-identity.ts)
 *
 * The agent pass (agent.ts) sees an ordinary MetadataClient and TargetSource: refresh() is the
 * check-in plus the verified refresh, and the target source follows the repository named there.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DevicePendingError, FleetDeviceClient, FleetProtocolError } from '../../fleet/protocol/client.js';
import type { CheckInRequest, ReportRequest, RepositoryLocation, SlotName } from '../../fleet/protocol/messages.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { EdgekitError } from '../../util/errors.js';
import { createMetadataClient, type MetadataClient, type UpdateInfo } from '../repo/index.js';
import type { Bootchooser, SlotState } from '../slots/bootchooser.js';
import type { AgentOutcome } from './agent.js';
import type { AgentConfig, FleetConfig } from './config.js';
import { commitKeyRotation, keyAgeDays, loadDeviceIdentity, pendingKey, prepareKeyRotation, type DeviceIdentity } from './device-identity.js';
import { RefusedReport, ReportQueue } from './report-queue.js';
import { reportLine, type Report, type Reporter } from './reports.js';
import { httpTargetsSource, type TargetSource } from './target-source.js';

/** How the last exchange with the server went. */
export type LinkStatus = 'accepted' | 'pending' | 'rejected' | 'unreachable';

/** What the link remembers on /data besides the queue. */
interface LinkState {
  /** The server accepted this device once: the provisioning token is not presented again. */
  registered?: boolean;
  /** The version the device last checked in with, and the one before it. */
  version?: string;
  previousVersion?: string;
}

/** The server's report fields are bounded (src/fleet/schemas.ts). */
const MAX_REASON = 1000;

export class FleetLink {
  status: LinkStatus = 'unreachable';
  private failures = 0;
  private repoSource: TargetSource | undefined;
  private repoClient: MetadataClient | undefined;

  private constructor(
    readonly config: AgentConfig & { fleet: FleetConfig },
    readonly identity: DeviceIdentity,
    private readonly client: FleetDeviceClient,
    readonly queue: ReportQueue,
    private readonly stateFile: string,
    private state: LinkState,
    private readonly log: (line: string) => void,
  ) {}

  /** Loads (on first start: makes) the device identity and the link's state from /data. */
  static async open(config: AgentConfig, log: (line: string) => void): Promise<FleetLink> {
    if (!config.fleet) throw new EdgekitError('the update configuration names no fleet server (image spec update.fleet)');
    const fleet = config.fleet;
    const identity = await loadDeviceIdentity(fleet);
    if (identity.created) log(`edgekit-agent: made this device's key pair: ${fleet.keyFile}`);
    const dir = join(config.stateDir, 'fleet');
    await mkdir(dir, { recursive: true });
    const stateFile = join(dir, 'link.json');
    const state = await readFile(stateFile, 'utf8').then((t) => JSON.parse(t) as LinkState, () => ({}) as LinkState);
    const client = new FleetDeviceClient({
      server: fleet.server,
      deviceId: identity.deviceId,
      privateKey: identity.privateKey,
      ...(identity.provisioningToken && !state.registered ? { provisioningToken: identity.provisioningToken } : {}),
      timeoutMs: 20_000,
    });
    const queue = new ReportQueue(join(dir, 'reports.json'), fleet.queueLimit, log);
    return new FleetLink({ ...config, fleet }, identity, client, queue, stateFile, state, log);
  }

  get deviceId(): string {
    return this.identity.deviceId;
  }

  /**
   * Console line, then the queue on /data, then (unless `queueOnly`: an offline update) delivery
   * of everything queued. Never throws for the server's sake: reports must not hold up an update.
   * 'checking' stays on the console: the check-in says as much to the server.
   */
  reporter(o: { queueOnly?: boolean } = {}): Reporter {
    return async (r) => {
      this.log(reportLine(r));
      if (r.state === 'checking') return;
      try {
        await this.queue.add(toProtocolReport(r));
      } catch (err) {
        // /data full or failing: still try to tell the server, once, rather than fail the update.
        this.log(`edgekit-agent: cannot queue the report on ${this.queue.file}: ${(err as Error).message}; sending it without queueing`);
        if (!o.queueOnly) await this.client.report({ ...toProtocolReport(r), id: ReportQueue.newId() }).catch((e: Error) => this.log(`edgekit-agent: report not delivered: ${e.message}`));
        return;
      }
      if (!o.queueOnly) await this.deliver();
    };
  }

  /** Sends the queued reports; false when some could not be delivered (they stay queued). */
  async deliver(): Promise<boolean> {
    const r = await this.queue.flush(async (report) => {
      try {
        await this.client.report(report);
      } catch (err) {
        // A report the server calls malformed would block the queue forever: drop it (logged).
        if (err instanceof FleetProtocolError && !(err instanceof DevicePendingError) && [400, 404, 413, 415, 422].includes(err.status)) throw new RefusedReport(err.message);
        throw err;
      }
    });
    if (r.error) {
      this.noteFailure(r.error);
      this.log(`edgekit-agent: ${r.left} report${r.left === 1 ? '' : 's'} kept for later: ${r.error.message}`);
      return false;
    }
    if (r.delivered) await this.noteAccepted();
    return true;
  }

  /**
   * The MetadataClient the agent pass uses: refresh() delivers queued reports, checks in, and
   * returns the verified release the server offers (null: none, or the server cannot be reached,
   * or the device is not accepted yet; `status` says which).
   */
  metadataClient(chooser: Bootchooser): MetadataClient {
    const current = (): MetadataClient => {
      if (!this.repoClient) throw new EdgekitError('fleet: no release repository yet: refresh() must succeed first');
      return this.repoClient;
    };
    return {
      refresh: () => this.checkIn(chooser),
      open: (t) => current().open(t),
      download: (t, f) => current().download(t, f),
      trustedTime: () => (this.repoClient ?? this.repositoryClient({ url: this.config.fleet.server })).trustedTime(),
    };
  }

  /** Where the offered release's files are (set by the check-in that offered it). */
  targetSource(): TargetSource {
    return {
      where: this.config.fleet.server,
      openFrom: (target, start, signal) => {
        if (!this.repoSource) throw new EdgekitError('fleet: no release repository yet: refresh() must succeed first');
        return this.repoSource.openFrom(target, start, signal);
      },
    };
  }

  /** Seconds until the next pass: at once after a commit or rollback (the server hears the new state), backoff while not accepted or unreachable. */
  nextWait(outcome: AgentOutcome): number {
    const { checkInterval, fleet } = this.config;
    if (outcome === 'committed' || outcome === 'rolled-back') return 0;
    if (this.status !== 'accepted') return Math.min(checkInterval, fleet.retry * 2 ** Math.min(this.failures - 1, 20));
    if (outcome === 'failed') return Math.min(checkInterval, 60);
    return checkInterval;
  }

  private async checkIn(chooser: Bootchooser): Promise<UpdateInfo | null> {
    const c = this.config;
    const slot = await chooser.activeSlot();
    const req: CheckInRequest = { board: c.board, version: c.version, slot, slotState: slotStates(await chooser.state()) };
    await this.trackVersion();
    if (this.state.previousVersion) req.previousVersion = this.state.previousVersion;
    let answer;
    try {
      await this.rotateKeyIfDue();
      // Reports first, in order: the server hears how the last attempt ended before it decides.
      if (await this.deliver()) answer = await this.client.checkIn(req);
    } catch (err) {
      this.noteFailure(err as Error);
      if (!(err instanceof DevicePendingError)) this.log(`edgekit-agent: check-in with ${c.fleet.server} failed: ${(err as Error).message}`);
    }
    if (!answer) {
      if (this.status === 'pending') this.log(`edgekit-agent: device ${this.deviceId} is waiting for an operator to accept it on ${c.fleet.server}`);
      this.log(`edgekit-agent: next check-in in ${this.nextWait('idle')} s`);
      return null;
    }
    await this.noteAccepted();
    if (!answer.release) {
      this.log(`edgekit-agent: the fleet server offers no release for ${c.version} on ${c.board}`);
      return null;
    }
    const location = answer.repository ?? (c.server ? { url: c.server } : undefined);
    if (!location) throw new EdgekitError(`the fleet server offers ${answer.release.version} but names no release repository, and the update configuration has no server`);
    this.log(`edgekit-agent: the fleet server offers ${answer.release.version} (rollout ${answer.release.rolloutId}); checking it against the signed metadata`);
    this.repoClient = this.repositoryClient(location, answer.release.version);
    this.repoSource = httpTargetsSource({
      targetsUrl: this.resolve(location.targetsUrl ?? new URL('targets/', this.resolve(location.url).replace(/\/*$/, '/')).href),
      headers: this.headersFor,
    });
    return this.repoClient.refresh();
  }

  /**
   * Finishes a key rotation that was asked for (a `.next` key on /data) or starts one when the key
   * is older than fleet.keyRotationDays. The server's answer comes before the rename: a device
   * whose answer was lost still holds `.next` and asks again. Throws when the server cannot be
   * reached (the check-in would fail too); a refusal is logged and the old key stays in use.
   */
  async rotateKeyIfDue(): Promise<boolean> {
    const { keyFile, keyRotationDays } = this.config.fleet;
    let next = await pendingKey(keyFile);
    if (!next && keyRotationDays !== undefined && ((await keyAgeDays(keyFile)) ?? 0) > keyRotationDays) {
      this.log(`edgekit-agent: the device key is older than ${keyRotationDays} days: replacing it`);
      next = await prepareKeyRotation(keyFile);
    }
    if (!next) return false;
    try {
      await this.client.rotateKey(next);
    } catch (err) {
      if (!(err instanceof FleetProtocolError) || err.status === 0 || err.status >= 500) throw err;
      this.log(`edgekit-agent: the fleet server refused the new device key, keeping the old one: ${err.message}`);
      return false;
    }
    await commitKeyRotation(keyFile);
    this.identity.privateKey = next;
    this.log(`edgekit-agent: device key replaced; the fleet server knows ${this.deviceId} by the new key`);
    return true;
  }

  private repositoryClient(location: RepositoryLocation, version?: string): MetadataClient {
    const c = this.config;
    return createMetadataClient({
      repoUrl: this.resolve(location.url),
      ...(location.targetsUrl ? { targetsUrl: this.resolve(location.targetsUrl) } : {}),
      headers: this.headersFor,
      trustedRoot: c.trustedRoot,
      stateDir: join(c.stateDir, 'tuf'),
      board: c.board,
      name: c.name,
      channel: c.channel,
      installedVersion: c.version,
      ...(version ? { version } : {}),
      minimumTime: c.builtAt !== undefined ? new Date(c.builtAt * 1000) : undefined,
    });
  }

  /** The device token goes to the fleet server only, never to a CDN or another host. */
  private readonly headersFor = async (url: string, renew: boolean): Promise<Record<string, string>> => {
    if (new URL(url).origin !== new URL(this.config.fleet.server).origin) return {};
    if (renew) this.client.dropToken();
    return { authorization: `Bearer ${await this.client.bearer()}` };
  };

  private resolve(url: string): string {
    const u = new URL(url, this.config.fleet.server.replace(/\/*$/, '/'));
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new EdgekitError(`the fleet server names a repository at ${u.href}: not an http(s) URL`);
    return u.href;
  }

  private noteFailure(err: Error): void {
    this.status = err instanceof DevicePendingError ? 'pending' : err instanceof FleetProtocolError && err.status === 403 ? 'rejected' : 'unreachable';
    this.failures++;
  }

  private async noteAccepted(): Promise<void> {
    this.status = 'accepted';
    this.failures = 0;
    if (!this.state.registered) {
      this.state.registered = true;
      await this.saveState();
      if (this.identity.provisioningToken) this.log(`edgekit-agent: device ${this.deviceId} accepted by ${this.config.fleet.server}`);
    }
  }

  /** previousVersion: what the device ran before the version it runs now. */
  private async trackVersion(): Promise<void> {
    const v = this.config.version;
    if (this.state.version === v) return;
    if (this.state.version) this.state.previousVersion = this.state.version;
    this.state.version = v;
    await this.saveState();
  }

  private saveState(): Promise<void> {
    return writeFileAtomic(this.stateFile, `${JSON.stringify(this.state)}\n`, 0o600);
  }
}

/** The boot chain's view of a slot in a few words: good, trying (2 tries left), failed, not bootable. */
export function slotStates(states: SlotState[]): Partial<Record<SlotName, string>> {
  const out: Partial<Record<SlotName, string>> = {};
  for (const s of states) {
    out[s.slot] = s.failed ? 'failed' : !s.bootable ? 'not bootable' : s.good ? 'good' : s.tries !== undefined ? `trying (${s.tries} tries left)` : 'bootable';
  }
  return out;
}

/** The agent's report as the protocol carries it: the download size and method go into the reason. */
export function toProtocolReport(r: Report): Omit<ReportRequest, 'id'> {
  const detail = r.bytes !== undefined ? `${r.bytes} bytes${r.method ? ` (${r.method})` : ''}` : undefined;
  const reason = [detail, r.reason].filter(Boolean).join(': ');
  return {
    state: r.state,
    ...(r.version ? { version: r.version } : {}),
    running: r.running,
    slot: r.slot,
    ...(reason ? { reason: reason.length > MAX_REASON ? `${reason.slice(0, MAX_REASON - 3)}...` : reason } : {}),
  };
}
