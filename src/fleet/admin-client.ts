/** The admin API from the operator's side: what `edgekit fleet` calls, one typed method per operation. */
import { EdgekitError } from '../util/errors.js';
import type { RolloutCost } from './cost.js';
import type { FleetOverview } from './overview.js';
import type { RolloutProgress } from './progress.js';
import type { Actor, RolloutStatus } from './service.js';
import type {
  ChannelRow, DeviceQuery, DeviceRow, MaintenanceWindow, MemberRow, ReleaseRow, RolloutStage, StoredReport,
} from './store/store.js';

/** An error answer of the server: the HTTP status and the server's one-line reason. */
export class FleetAdminError extends EdgekitError {
  constructor(message: string, readonly status: number, readonly reason: string) {
    super(message);
  }
}

export interface NewRollout {
  version: string;
  channel: string;
  filter?: { tags?: string[]; board?: string };
  stages: RolloutStage[];
  maxFailureRatio?: number;
  minSuccessRatio?: number;
  windows?: MaintenanceWindow[];
}

export type RolloutAction = 'pause' | 'resume' | 'abort';

export class FleetAdminClient {
  private readonly base: URL;

  constructor(server: string, private readonly token: string) {
    let base: URL;
    try {
      base = new URL(server.replace(/\/*$/, '/'));
    } catch {
      throw new EdgekitError(`fleet server ${JSON.stringify(server)}: not a URL (e.g. http://127.0.0.1:8480)`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') throw new EdgekitError(`fleet server ${server}: use an http:// or https:// URL`);
    this.base = base;
  }

  whoami(): Promise<Actor> {
    return this.call('GET', '/v1/admin/whoami');
  }

  overview(): Promise<FleetOverview> {
    return this.call('GET', '/v1/admin/overview');
  }

  listDevices(q: DeviceQuery = {}): Promise<DeviceRow[]> {
    const params = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined) as Array<[string, string]>);
    return this.call('GET', `/v1/admin/devices${params.size ? `?${params}` : ''}`);
  }

  device(id: string): Promise<DeviceRow> {
    return this.call('GET', `/v1/admin/devices/${enc(id)}`);
  }

  deviceReports(id: string, limit = 20): Promise<StoredReport[]> {
    return this.call('GET', `/v1/admin/devices/${enc(id)}/reports?limit=${limit}`);
  }

  /** Registers a device by its public key: accepted at its first handshake (pre-authorised). */
  registerDevice(o: { id: string; publicKey: string; channel?: string; tags?: string[] }): Promise<DeviceRow> {
    return this.call('POST', '/v1/admin/devices', o);
  }

  /** Replaces a device's key (lost key, replaced board); tokens issued before are refused. */
  setDeviceKey(id: string, publicKey: string): Promise<DeviceRow> {
    return this.call('PUT', `/v1/admin/devices/${enc(id)}/key`, { publicKey });
  }

  acceptDevice(id: string): Promise<DeviceRow> {
    return this.call('POST', `/v1/admin/devices/${enc(id)}/accept`, {});
  }

  /** Rejects the device: its key no longer authenticates and it is offered nothing. */
  revokeDevice(id: string): Promise<DeviceRow> {
    return this.call('POST', `/v1/admin/devices/${enc(id)}/reject`, {});
  }

  setDeviceTags(id: string, tags: string[]): Promise<DeviceRow> {
    return this.call('PUT', `/v1/admin/devices/${enc(id)}/tags`, { tags });
  }

  setDeviceChannel(id: string, channel: string): Promise<DeviceRow> {
    return this.call('PUT', `/v1/admin/devices/${enc(id)}/channel`, { channel });
  }

  listChannels(): Promise<ChannelRow[]> {
    return this.call('GET', '/v1/admin/channels');
  }

  createChannel(name: string): Promise<{ name: string }> {
    return this.call('POST', '/v1/admin/channels', { name });
  }

  listReleases(channel?: string): Promise<ReleaseRow[]> {
    return this.call('GET', `/v1/admin/releases${channel ? `?channel=${encodeURIComponent(channel)}` : ''}`);
  }

  addRelease(r: { version: string; channel: string; board?: string }): Promise<ReleaseRow> {
    return this.call('POST', '/v1/admin/releases', r);
  }

  /** Takes a release off a channel's list (refused while a live rollout offers it). */
  removeRelease(version: string, channel: string): Promise<{ removed: { channel: string; version: string } }> {
    return this.call('DELETE', `/v1/admin/releases/${enc(channel)}/${enc(version)}`);
  }

  listRollouts(): Promise<RolloutStatus[]> {
    return this.call('GET', '/v1/admin/rollouts');
  }

  rollout(id: string): Promise<RolloutStatus> {
    return this.call('GET', `/v1/admin/rollouts/${enc(id)}`);
  }

  rolloutProgress(id: string): Promise<RolloutProgress> {
    return this.call('GET', `/v1/admin/rollouts/${enc(id)}/progress`);
  }

  rolloutMembers(id: string): Promise<MemberRow[]> {
    return this.call('GET', `/v1/admin/rollouts/${enc(id)}/devices`);
  }

  createRollout(r: NewRollout): Promise<RolloutStatus> {
    return this.call('POST', '/v1/admin/rollouts', r);
  }

  setRolloutState(id: string, action: RolloutAction): Promise<RolloutStatus> {
    return this.call('POST', `/v1/admin/rollouts/${enc(id)}/${action}`, {});
  }

  /** What a rollout of `version` to the channel's matching devices would download, per cohort. */
  costOf(q: { version: string; channel: string; filter?: { tags?: string[]; board?: string } }): Promise<RolloutCost> {
    return this.call('POST', '/v1/admin/rollouts/cost', q);
  }

  /** What an existing rollout still has to download. */
  rolloutCost(id: string): Promise<RolloutCost> {
    return this.call('GET', `/v1/admin/rollouts/${enc(id)}/cost`);
  }

  /** A file of the server's release repository (`repo.json`, `metadata/<file>`, `targets/<path>`), as a response to read. */
  repoFile(rel: string): Promise<Response> {
    return this.request('GET', `/v1/admin/repo/${rel}`);
  }

  /** The size of a repository file on the server, or null when it has none. */
  async repoFileSize(rel: string): Promise<number | null> {
    const res = await this.request('HEAD', `/v1/admin/repo/${rel}`, {}, [404]);
    return res.status === 404 ? null : Number(res.headers.get('content-length'));
  }

  /** Uploads one content-named target file (`targets/<path>`), streamed; the server checks its sha256. */
  async uploadTarget(rel: string, body: ReadableStream<Uint8Array>): Promise<{ path: string; length: number; sha256: string; stored: boolean }> {
    const res = await this.request('PUT', `/v1/admin/repo/${rel}`, { body, duplex: 'half', headers: { 'content-type': 'application/octet-stream' } } as RequestInit);
    return this.json(res, 'PUT', rel);
  }

  /** Has the server give the file `fromRel` (same sha256 in its name) the name `rel` too: no bytes are sent. */
  async copyTarget(rel: string, fromRel: string): Promise<{ path: string; length: number; sha256: string; stored: boolean }> {
    const res = await this.request('PUT', `/v1/admin/repo/${rel}`, { body: '', headers: { 'x-edgekit-copy-of': fromRel, 'content-type': 'application/octet-stream' } });
    return this.json(res, 'PUT', rel);
  }

  /** Sends signed targets metadata; the server checks it and writes snapshot and timestamp over it. */
  publishTargets(metadata: unknown): Promise<{ targetsVersion: number; timestampVersion: number }> {
    return this.call('POST', '/v1/admin/repo/targets', metadata);
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.request(method, path, body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {});
    return this.json(res, method, path);
  }

  /** Sends a request; an error answer (other than the `allowed` statuses) becomes a FleetAdminError with the server's reason. */
  private async request(method: string, path: string, init: RequestInit = {}, allowed: number[] = []): Promise<Response> {
    const url = new URL(path.replace(/^\//, ''), this.base);
    let res: Response;
    try {
      res = await fetch(url, { ...init, method, headers: { authorization: `Bearer ${this.token}`, ...(init.headers as Record<string, string> | undefined) } });
    } catch (err) {
      const cause = (err as Error).cause as { code?: string; message?: string } | undefined;
      throw new EdgekitError(`${this.base.origin}: cannot reach the fleet server (${cause?.code ?? cause?.message ?? (err as Error).message})`);
    }
    if (res.ok || allowed.includes(res.status)) return res;
    const text = await res.text().catch(() => '');
    let reason = text.trim();
    try {
      reason = (JSON.parse(text) as { error?: string })?.error ?? reason;
    } catch {
      if (method !== 'HEAD') throw new EdgekitError(`${method} ${url.href}: HTTP ${res.status} with an answer that is not JSON: is this an edgekit fleet server?`);
    }
    const hint = res.status === 401 ? ' (give an admin token with --token, --token-file or EDGEKIT_FLEET_TOKEN)' : '';
    throw new FleetAdminError(`${method} ${url.pathname}: ${res.status} ${res.statusText || 'error'}: ${reason}${hint}`, res.status, reason);
  }

  private async json<T>(res: Response, method: string, path: string): Promise<T> {
    const text = await res.text();
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new EdgekitError(`${method} ${new URL(path.replace(/^\//, ''), this.base).href}: HTTP ${res.status} with an answer that is not JSON: is this an edgekit fleet server?`);
    }
  }
}

const enc = (s: string) => encodeURIComponent(s);
