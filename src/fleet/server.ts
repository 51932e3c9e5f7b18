/**
 * The fleet server over node:http: a small route table, JSON bodies checked with zod, and every
 * failure a client can cause answered with a 4xx and a one-line reason. A handler that throws
 * anything else is a bug: the request gets a 500 and the server keeps serving.
 */
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { createSecureContext } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { z } from 'zod';
import { EdgekitError } from '../util/errors.js';
import { SCOPE_RANK } from './auth.js';
import { rolloutCost } from './cost.js';
import { DASHBOARD_HEADERS, loadDashboardAssets, type Asset } from './dashboard-assets.js';
import { Metrics } from './metrics.js';
import { DEFAULT_ONLINE_SECONDS, fleetOverview } from './overview.js';
import { rolloutProgress } from './progress.js';
import { DEVICE_PATHS, type CheckInResponse, type RepositoryLocation } from './protocol/messages.js';
import { serveRepoFile } from './repo-files.js';
import { COPY_OF_HEADER, publishTargets, receiveTarget } from './repo-publish.js';
import type { RepoSigner } from './repo-signer.js';
import * as S from './schemas.js';
import { FleetError, FleetService, type Actor } from './service.js';
import { parseWindow } from './windows.js';
import type { DeviceStatus, RolloutRow, Scope } from './store/store.js';

const MAX_BODY = 64 * 1024;
/** Targets metadata lists every file of every release in the repository: far bigger than other bodies. */
const MAX_TARGETS_BODY = 32 << 20;
const UPLOAD_IDLE_MS = 120_000;

interface Ctx {
  req: IncomingMessage;
  params: string[];
  query: URLSearchParams;
  /** The JSON body, refused past `max` bytes (default MAX_BODY). */
  body: (max?: number) => Promise<unknown>;
  bearer: string | null;
}
type Handler = (c: Ctx) => Promise<{ status?: number; body: unknown } | unknown>;
/** A handler result that writes the response itself (repository files); resolves to the status it sent. */
interface RawResult {
  raw: (res: ServerResponse) => Promise<number>;
}
interface Route {
  method: string;
  pattern: RegExp;
  name: string;
  handler: Handler;
}

export interface RunningServer {
  server: Server;
  url: string;
  close(): Promise<void>;
}

export interface FleetServerOptions {
  service: FleetService;
  host?: string;
  port?: number;
  tickMs?: number;
  /** PEM certificate chain and private key: serve HTTPS. */
  tls?: { cert: Buffer; key: Buffer };
  log?: (line: string) => void;
  /**
   * The release repository folder: served to authenticated devices (metadata/ and targets/, the
   * check-in answer points there), and rollout costs are read from its targets metadata.
   */
  repo?: string;
  /** With repo: devices fetch targets/ (the payloads) from this static host or CDN instead. */
  payloadsUrl?: string;
  /** Serve the web dashboard at /dashboard/ (default true). */
  dashboard?: boolean;
  /**
   * With repo: the signer holding the repository's online keys (--online-keys). The admin API then
   * serves the repository to operators and takes releases they signed (repo-publish.ts).
   */
  signer?: RepoSigner;
}

export async function startFleetServer(o: FleetServerOptions): Promise<RunningServer> {
  const metrics = new Metrics();
  const routes = buildRoutes(o.service, metrics, { repo: o.repo, payloadsUrl: o.payloadsUrl });
  addRepoAdminRoutes(routes, o.service, o.repo && o.signer ? o.signer : undefined);
  if (o.dashboard ?? true) addDashboardRoutes(routes, await loadDashboardAssets());
  const log = o.log ?? (() => {});
  const listener: RequestListener = (req, res) => {
    void handle(routes, metrics, req, res, log);
  };
  if (o.tls) checkTls(o.tls);
  const server: Server = o.tls ? createTlsServer({ cert: o.tls.cert, key: o.tls.key }, listener) : createServer(listener);
  server.keepAliveTimeout = 30_000;
  if (o.repo && o.signer) {
    // Target uploads (100+ MB) outlast node's 5-minute limit on receiving a whole request on slow
    // links: drop it, and close connections that stay silent for UPLOAD_IDLE_MS instead.
    server.requestTimeout = 0;
    server.timeout = UPLOAD_IDLE_MS;
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => resolve());
  });
  const tick = setInterval(() => void o.service.tick().catch((err: Error) => log(`rollout tick failed: ${err.message}`)), o.tickMs ?? 1000);
  tick.unref();
  const a = server.address() as AddressInfo;
  return {
    server,
    url: `${o.tls ? 'https' : 'http'}://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`,
    close: () => {
      clearInterval(tick);
      return new Promise((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
    },
  };
}

/** Throws a one-line error unless the certificate and key load and belong together. */
export function checkTls(tls: { cert: Buffer; key: Buffer }): void {
  try {
    createSecureContext({ cert: tls.cert, key: tls.key });
  } catch (err) {
    throw new EdgekitError(`TLS certificate or key not usable: ${(err as Error).message}`);
  }
}

async function handle(routes: Route[], metrics: Metrics, req: IncomingMessage, res: ServerResponse, log: (line: string) => void): Promise<void> {
  let routeName = 'unknown';
  const send = (status: number, body: unknown, type = 'application/json') => {
    metrics.countRequest(routeName, status);
    const data = Buffer.from(type === 'application/json' ? `${JSON.stringify(body)}\n` : String(body));
    res.writeHead(status, { 'content-type': type, 'content-length': data.length });
    res.end(data);
  };
  try {
    const url = new URL(req.url ?? '/', 'http://fleet.invalid');
    const matching = routesFor(routes, url.pathname);
    if (!matching.length) return send(404, { error: `no such endpoint: ${url.pathname}` });
    const route = matching.find((r) => r.method === req.method);
    if (!route) return send(405, { error: `${req.method} not allowed on ${url.pathname} (use ${matching.map((r) => r.method).join(', ')})` });
    routeName = route.name;
    const auth = req.headers.authorization;
    const ctx: Ctx = {
      req,
      params: (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodeURIComponent),
      query: url.searchParams,
      body: (max) => readJson(req, max),
      bearer: auth?.startsWith('Bearer ') ? auth.slice(7).trim() : null,
    };
    const result = await route.handler(ctx);
    if (result && typeof result === 'object' && 'raw' in result) return metrics.countRequest(routeName, await (result as RawResult).raw(res));
    if (result && typeof result === 'object' && 'asset' in result) return sendAsset(req, res, (result as { asset: Asset }).asset, (s) => metrics.countRequest(routeName, s));
    if (result && typeof result === 'object' && 'redirect' in result) {
      metrics.countRequest(routeName, 302);
      return void res.writeHead(302, { location: (result as { redirect: string }).redirect, 'content-length': 0 }).end();
    }
    if (result && typeof result === 'object' && 'text' in result) return send(200, (result as { text: string }).text, 'text/plain; version=0.0.4; charset=utf-8');
    const r = result as { status?: number; body: unknown };
    send(r.status ?? 200, r.body);
  } catch (err) {
    if (err instanceof FleetError) return send(err.status, { error: err.message });
    log(`fleet: internal error on ${req.method} ${req.url}: ${(err as Error).stack ?? err}`);
    if (!res.headersSent) send(500, { error: 'internal error (logged by the server)' });
  }
}

function sendAsset(req: IncomingMessage, res: ServerResponse, a: Asset, count: (status: number) => void): void {
  const headers = { ...DASHBOARD_HEADERS, etag: a.etag };
  if (req.headers['if-none-match'] === a.etag) {
    count(304);
    return void res.writeHead(304, headers).end();
  }
  count(200);
  res.writeHead(200, { ...headers, 'content-type': a.type, 'content-length': a.data.length });
  res.end(req.method === 'HEAD' ? undefined : a.data);
}

/**
 * The routes whose pattern matches the path. Paths only routes without parameters match (the
 * device endpoints every device calls) are looked up once and kept, up to MAX_KEPT_PATHS of them.
 */
const fixedPaths = new WeakMap<Route[], Map<string, Route[]>>();
const MAX_KEPT_PATHS = 256;
function routesFor(routes: Route[], path: string): Route[] {
  let known = fixedPaths.get(routes);
  if (!known) fixedPaths.set(routes, (known = new Map()));
  const hit = known.get(path);
  if (hit) return hit;
  const matching = routes.filter((r) => r.pattern.test(path));
  if (matching.length && known.size < MAX_KEPT_PATHS && matching.every((r) => !r.pattern.source.includes('('))) known.set(path, matching);
  return matching;
}

function readJson(req: IncomingMessage, max = MAX_BODY): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json\b/.test(type)) {
      req.resume();
      return reject(new FleetError(415, `content-type must be application/json, not ${JSON.stringify(type)}`));
    }
    const chunks: Buffer[] = [];
    let size = 0;
    // An oversized body is read to its end and dropped (not kept), so the client gets the 413 answer.
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size <= max) chunks.push(c);
    });
    req.on('error', () => reject(new FleetError(400, 'request body not received')));
    req.on('end', () => {
      if (size > max) return reject(new FleetError(413, `request body over ${max} bytes`));
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(new FleetError(400, `body is not JSON: ${(err as Error).message}`));
      }
    });
  });
}

async function parsed<T extends z.ZodType>(c: Ctx, schema: T): Promise<z.infer<T>> {
  const r = schema.safeParse(await c.body());
  if (!r.success) {
    const i = r.error.issues[0];
    throw new FleetError(400, `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`);
  }
  return r.data;
}

function routeAdder(routes: Route[]) {
  return (method: string, path: string, handler: Handler) => {
    const pattern = new RegExp(`^${path.replace(/:[a-z]+/g, '([^/]+)')}$`);
    routes.push({ method, pattern, name: `${method} ${path}`, handler });
  };
}

/**
 * The release repository for operators: its files (what `edgekit release --fleet` mirrors before
 * signing), target uploads, and signed targets metadata, over which the server writes snapshot and
 * timestamp. Only on a server that holds the online keys.
 */
function addRepoAdminRoutes(routes: Route[], service: FleetService, signer: RepoSigner | undefined): void {
  const PREFIX = '/v1/admin/repo/';
  const guarded = (scope: Scope, h: (c: Ctx, actor: Actor, signer: RepoSigner) => Promise<unknown>): Handler => async (c) => {
    const actor = await service.adminOf(c.bearer);
    if (SCOPE_RANK[actor.scope] < SCOPE_RANK[scope]) throw new FleetError(403, `token ${actor.tokenId} has scope ${actor.scope}; this needs ${scope}`);
    if (!signer) throw new FleetError(501, 'the server was started without --repo and --online-keys: it has no repository to publish into, or no snapshot and timestamp keys to sign it with');
    return h(c, actor, signer);
  };
  // Not URL-decoded: repository file names are plain characters, anything else is refused.
  const relOf = (c: Ctx) => new URL(c.req.url ?? '/', 'http://fleet.invalid').pathname.slice(PREFIX.length);
  const read = guarded('read', async (c, _a, s) => ({ raw: (res) => serveRepoFile({ dir: s.repo }, relOf(c), c.req, res) }) satisfies RawResult);
  for (const method of ['GET', 'HEAD']) routes.push({ method, pattern: /^\/v1\/admin\/repo\/(repo\.json|metadata\/.+|targets\/.+)$/, name: `${method} ${PREFIX}*`, handler: read });
  routes.push({
    method: 'PUT', pattern: /^\/v1\/admin\/repo\/targets\/(.+)$/, name: `PUT ${PREFIX}targets/*`,
    handler: guarded('operator', async (c, a, s) => {
      const copyOf = c.req.headers[COPY_OF_HEADER];
      if (Array.isArray(copyOf)) throw new FleetError(400, `${COPY_OF_HEADER}: give one file`);
      const from = copyOf?.replace(/^targets\//, '');
      const r = await receiveTarget(s.repo, relOf(c).slice('targets/'.length), c.req, from);
      if (r.stored) await service.audit(a, 'repo.upload', `targets/${r.path}`, { length: r.length, ...(from ? { copyOf: `targets/${from}` } : {}) });
      return { body: r };
    }),
  });
  routes.push({
    method: 'POST', pattern: /^\/v1\/admin\/repo\/targets$/, name: `POST ${PREFIX}targets`,
    handler: guarded('operator', async (c, a, s) => {
      const r = await publishTargets(s, await c.body(MAX_TARGETS_BODY));
      await service.audit(a, 'repo.publish', `targets v${r.targetsVersion}`, r);
      return { body: { targetsVersion: r.targetsVersion, timestampVersion: r.timestampVersion } };
    }),
  });
}

/** The dashboard's static files; everything they show comes from the admin API (with a token). */
function addDashboardRoutes(routes: Route[], assets: Map<string, Asset>): void {
  const add = routeAdder(routes);
  add('GET', '/', async () => ({ redirect: '/dashboard/' }));
  add('GET', '/dashboard', async () => ({ redirect: '/dashboard/' }));
  add('GET', '/dashboard/', async () => ({ asset: assets.get('index.html')! }));
  add('GET', '/dashboard/:file', async (c) => {
    const asset = assets.get(c.params[0]);
    if (!asset) throw new FleetError(404, `no such dashboard file: ${c.params[0]}`);
    return { asset };
  });
}

function buildRoutes(service: FleetService, metrics: Metrics, o: { repo?: string; payloadsUrl?: string }): Route[] {
  const routes: Route[] = [];
  const add = routeAdder(routes);
  const admin = (scope: Scope, h: (c: Ctx, actor: Actor) => Promise<unknown>): Handler => async (c) => {
    const actor = await service.adminOf(c.bearer);
    if (SCOPE_RANK[actor.scope] < SCOPE_RANK[scope]) throw new FleetError(403, `token ${actor.tokenId} has scope ${actor.scope}; this needs ${scope}`);
    return { body: await h(c, actor) };
  };
  const device = (h: (c: Ctx, d: Awaited<ReturnType<FleetService['deviceOf']>>) => Promise<unknown>): Handler => async (c) => ({ body: await h(c, await service.deviceOf(c.bearer)) });

  add('POST', DEVICE_PATHS.hello, async (c) => ({ body: { nonce: service.hello((await parsed(c, S.helloBody)).deviceId) } }));
  add('POST', DEVICE_PATHS.auth, async (c) => {
    const r = await service.authenticate(await parsed(c, S.authBody));
    return { status: r.status === 'pending' ? 202 : 200, body: r };
  });
  add('POST', DEVICE_PATHS.rotateKey, async (c) => ({ body: await service.rotateKey(await parsed(c, S.rotateKeyBody)) }));
  // A device offered a release is told where the signed repository is: this server's copy (payloads
  // possibly from a CDN), or, when the server has none, the one its own configuration names.
  const location: RepositoryLocation | undefined = o.repo ? { url: DEVICE_PATHS.repo, ...(o.payloadsUrl ? { targetsUrl: o.payloadsUrl } : {}) } : undefined;
  add('POST', DEVICE_PATHS.checkIn, device(async (c, d) => {
    const r: CheckInResponse = await service.checkIn(d, await parsed(c, S.checkInBody));
    return r.release && location ? { ...r, repository: location } : r;
  }));
  add('POST', DEVICE_PATHS.reports, device(async (c, d) => service.report(d, await parsed(c, S.reportBody))));
  if (o.repo) {
    const dir = o.repo;
    const repoFile: Handler = async (c) => {
      await service.deviceOf(c.bearer);
      // Not URL-decoded: repository file names are plain characters, anything else is not served.
      const rel = new URL(c.req.url ?? '/', 'http://fleet.invalid').pathname.slice(DEVICE_PATHS.repo.length);
      return { raw: (res) => serveRepoFile({ dir }, rel, c.req, res) } satisfies RawResult;
    };
    for (const method of ['GET', 'HEAD']) routes.push({ method, pattern: new RegExp(`^${DEVICE_PATHS.repo}(metadata|targets)/`), name: `${method} ${DEVICE_PATHS.repo}*`, handler: repoFile });
  }

  add('GET', '/metrics', async (c) => {
    const actor = await service.adminOf(c.bearer);
    void actor;
    return { text: await metrics.render(service) };
  });

  add('GET', '/v1/admin/devices', admin('read', async (c) => {
    const status = c.query.get('status');
    if (status && !['pending', 'accepted', 'rejected'].includes(status)) throw new FleetError(400, `status: not pending, accepted or rejected: ${status}`);
    return service.store.listDevices({
      status: (status as DeviceStatus) ?? undefined, channel: c.query.get('channel') ?? undefined, board: c.query.get('board') ?? undefined, tag: c.query.get('tag') ?? undefined,
    });
  }));
  add('POST', '/v1/admin/devices', admin('operator', async (c, a) => service.registerDevice(a, await parsed(c, S.deviceRegisterBody))));
  add('GET', '/v1/admin/devices/:id', admin('read', async (c) => service.requireDevice(c.params[0])));
  add('PUT', '/v1/admin/devices/:id/key', admin('operator', async (c, a) => service.setDeviceKey(a, c.params[0], (await parsed(c, S.deviceKeyBody)).publicKey)));
  for (const [verb, status] of [['accept', 'accepted'], ['reject', 'rejected']] as const) {
    add('POST', `/v1/admin/devices/:id/${verb}`, admin('operator', async (c, a) => {
      await service.requireDevice(c.params[0]);
      await service.store.setDeviceStatus(c.params[0], status);
      await service.audit(a, `device.${verb}`, c.params[0], null);
      return service.requireDevice(c.params[0]);
    }));
  }
  add('PUT', '/v1/admin/devices/:id/tags', admin('operator', async (c, a) => {
    const { tags } = await parsed(c, S.tagsBody);
    await service.requireDevice(c.params[0]);
    await service.store.setDeviceTags(c.params[0], tags);
    await service.audit(a, 'device.tags', c.params[0], { tags });
    return service.requireDevice(c.params[0]);
  }));
  add('PUT', '/v1/admin/devices/:id/channel', admin('operator', async (c, a) => {
    const { channel } = await parsed(c, S.deviceChannelBody);
    await service.requireDevice(c.params[0]);
    await service.requireChannel(channel);
    await service.store.setDeviceChannel(c.params[0], channel);
    await service.audit(a, 'device.channel', c.params[0], { channel });
    return service.requireDevice(c.params[0]);
  }));

  add('GET', '/v1/admin/channels', admin('read', async () => service.store.listChannels()));
  add('POST', '/v1/admin/channels', admin('operator', async (c, a) => {
    const { name } = await parsed(c, S.channelBody);
    if (!(await service.store.insertChannel({ name, createdAt: Date.now() }))) throw new FleetError(409, `channel ${name} exists`);
    await service.audit(a, 'channel.create', name, null);
    return { name };
  }));
  add('GET', '/v1/admin/releases', admin('read', async (c) => service.store.listReleases(c.query.get('channel') ?? undefined)));
  add('POST', '/v1/admin/releases', admin('operator', async (c, a) => {
    const b = await parsed(c, S.releaseBody);
    await service.requireChannel(b.channel);
    const row = { version: b.version, channel: b.channel, board: b.board ?? null, createdAt: Date.now() };
    if (!(await service.store.insertRelease(row))) throw new FleetError(409, `release ${b.version} is already in channel ${b.channel}`);
    await service.audit(a, 'release.create', `${b.channel}/${b.version}`, { board: row.board });
    return row;
  }));
  add('DELETE', '/v1/admin/releases/:channel/:version', admin('operator', async (c, a) => {
    await service.removeRelease(a, c.params[0], c.params[1]);
    return { removed: { channel: c.params[0], version: c.params[1] } };
  }));
  add('GET', '/v1/admin/rollouts', admin('read', async () => service.listRollouts()));
  add('POST', '/v1/admin/rollouts', admin('operator', async (c, a) => {
    const b = await parsed(c, S.rolloutBody);
    const windows = b.windows.map((w, i) => {
      if (typeof w !== 'string') return w;
      try {
        return parseWindow(w);
      } catch (err) {
        throw new FleetError(400, `windows.${i}: ${(err as Error).message}`);
      }
    });
    return service.createRollout(a, { ...b, windows });
  }));
  add('GET', '/v1/admin/rollouts/:id', admin('read', async (c) => service.rolloutStatus(c.params[0])));
  add('GET', '/v1/admin/rollouts/:id/devices', admin('read', async (c) => {
    await service.rolloutStatus(c.params[0]);
    return service.store.listMembers(c.params[0]);
  }));
  for (const action of ['pause', 'resume', 'abort'] as const) {
    add('POST', `/v1/admin/rollouts/:id/${action}`, admin('operator', async (c, a) => service.setRolloutState(a, c.params[0], action)));
  }

  // For operators' tools (dashboard, CLI): who the token is, the fleet at a glance, a device's
  // history, a rollout stage by stage, and what a rollout costs in bytes.
  add('GET', '/v1/admin/whoami', admin('read', async (_c, a) => a));
  add('GET', '/v1/admin/overview', admin('read', async (c) => {
    const within = Number(c.query.get('onlineWithin') ?? DEFAULT_ONLINE_SECONDS);
    if (!Number.isInteger(within) || within < 1) throw new FleetError(400, 'onlineWithin: a whole number of seconds');
    return fleetOverview(await service.store.listDevices({}), Date.now(), within);
  }));
  add('GET', '/v1/admin/devices/:id/reports', admin('read', async (c) => {
    const limit = Number(c.query.get('limit') ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new FleetError(400, 'limit: an integer 1-10000');
    await service.requireDevice(c.params[0]);
    return service.store.listDeviceReports(c.params[0], limit);
  }));
  add('GET', '/v1/admin/rollouts/:id/progress', admin('read', async (c) => {
    const r = await service.rolloutStatus(c.params[0]);
    return rolloutProgress(r, await service.store.listRolloutCandidates(r.channel), await service.store.listMembers(r.id));
  }));
  const cost = async (q: { version: string; channel: string; filter: RolloutRow['filter']; rollout?: RolloutRow }) => {
    if (!o.repo) throw new FleetError(501, 'the server was started without --repo: rollout costs are read from the release repository');
    try {
      return await rolloutCost(service.store, o.repo, q);
    } catch (err) {
      if (err instanceof EdgekitError) throw new FleetError(500, `release repository: ${err.message}`);
      throw err;
    }
  };
  add('POST', '/v1/admin/rollouts/cost', admin('read', async (c) => {
    const b = await parsed(c, S.rolloutCostBody);
    await service.requireChannel(b.channel);
    if (!(await service.store.getRelease(b.channel, b.version))) throw new FleetError(404, `no release ${b.version} in channel ${b.channel}`);
    return cost({ version: b.version, channel: b.channel, filter: { tags: [...new Set(b.filter?.tags ?? [])].sort(), board: b.filter?.board ?? null } });
  }));
  add('GET', '/v1/admin/rollouts/:id/cost', admin('read', async (c) => {
    const r = await service.rolloutStatus(c.params[0]);
    return cost({ version: r.version, channel: r.channel, filter: r.filter, rollout: r });
  }));

  add('GET', '/v1/admin/tokens', admin('admin', async () => service.store.listAdminTokens()));
  add('POST', '/v1/admin/tokens', admin('admin', async (c, a) => {
    const b = await parsed(c, S.tokenBody);
    return service.createAdminToken(a, b.name, b.scope);
  }));
  add('POST', '/v1/admin/provisioning-tokens', admin('admin', async (c, a) => service.createProvisioningToken(a, await parsed(c, S.provisioningBody))));
  add('GET', '/v1/admin/audit', admin('admin', async (c) => {
    const limit = Number(c.query.get('limit') ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new FleetError(400, 'limit: an integer 1-10000');
    return service.store.listAudit(limit);
  }));
  return routes;
}
