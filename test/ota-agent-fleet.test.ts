/**
 * The update agent managed by a real `edgekit serve` process on 127.0.0.1, which serves a real
 * release repository (1.1 published from a built gateway image, with a delta from 1.0): the
 * agent library on O3's simulated device, and the bundled agent.mjs in a child process on
 * partitions cut from a real image. First boot makes the key pair; a provisioning token gets the
 * device accepted; a rollout offers 1.1 and the agent installs it through the verified path;
 * reports and inventory reach the server; a server that is down keeps reports queued on /data
 * until the next check-in; devices outside the open stage, pending devices and releases the
 * signed metadata lacks install nothing. The server's state is read from its admin API and its
 * SQLite file.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { REPO, edgekit, testDir, type BuiltImage } from './helpers/built-images.js';
import { gatewayImages } from './helpers/ota-repo-fixtures.js';
import { agentRepo, bundleAgent, devicePartitionFiles, type AgentRepo } from './helpers/ota-agent-images.js';
import { bootedVersion, simAgentDevice, simHost, type SimAgentSetup } from './helpers/ota-agent-sim.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';
import { extractRange, sh } from './helpers/image-bytes.js';
import { peakRss, writeRssProbe } from './helpers/rss-probe.js';
import { mtoolsPaths } from './helpers/fat-tools.js';
import { freePort } from './helpers/qemu-image.js';
import { verifyVerity } from '../src/fs/verity.js';
import { FatReader } from '../src/fs/fat-reader.js';
import { makeDelta } from '../src/ota/delta/index.js';
import { publishRelease } from '../src/ota/repo/index.js';
import { runPass } from '../src/ota/agent/service.js';
import { FleetLink } from '../src/ota/agent/fleet-link.js';
import { deviceIdFromKey, loadDeviceIdentity } from '../src/ota/agent/device-identity.js';
import { RefusedReport, ReportQueue } from '../src/ota/agent/report-queue.js';
import type { ReportRequest } from '../src/fleet/protocol/messages.js';
import { FleetDeviceClient } from '../src/fleet/protocol/client.js';
import { deviceBucket, stageOfBucket } from '../src/fleet/rollout.js';
import { agentConfigFor, agentConfigText } from '../src/build/update-config.js';
import { loadBoard } from '../src/spec/board.js';
import type { AgentConfigInput } from '../src/ota/agent/config.js';
import type { ImageManifest, SignedManifest } from '../src/image/manifest.js';

const MiB = 1 << 20;
let v1: BuiltImage;
let v2: BuiltImage;
let m1: ImageManifest;
let m2: ImageManifest;
let repo: AgentRepo;
let deltaBytes: number;
let versions: Map<string, string>;
let working: Set<string>;
let dir: string;
let db: string;
let port: number;
let server: ServerProcess;
let url: string;
let admin: string;

const manifestOf = (b: BuiltImage) => (JSON.parse(readFileSync(b.manifest, 'utf8')) as SignedManifest).signed;
const rootHash = (m: ImageManifest) => m.payloads.find((p) => p.partition === 'system-a')!.verity!.rootHash;
const rootPayload = (m: ImageManifest) => m.payloads.find((p) => p.partition === 'system-a')!;

beforeAll(async () => {
  ({ v1, v2 } = await gatewayImages());
  m1 = manifestOf(v1);
  m2 = manifestOf(v2);
  dir = join(testDir(), 'agent-fleet');
  mkdirSync(dir, { recursive: true });
  // Release 1.1 with a delta from 1.0: the simulated devices take the full payload (they give the
  // agent no slot paths), the bundled agent on partition files takes the delta.
  repo = await agentRepo('agent-fleet');
  const p1 = extractRange(v1.image, rootPayload(m1).offset, rootPayload(m1).size, join(dir, 'p1.img'));
  const p2 = extractRange(v2.image, rootPayload(m2).offset, rootPayload(m2).size, join(dir, 'p2.img'));
  const deltaFile = join(dir, 'system.delta');
  const info = await makeDelta(p1, p2, deltaFile);
  deltaBytes = statSync(deltaFile).size;
  await publishRelease({ image: v2.image, repo: repo.repo, version: '1.1', keys: repo.keys, deltas: [{ file: deltaFile, fromVersion: '1.0', fromSha256: rootPayload(m1).sha256, info: info as unknown as Record<string, unknown> }] });
  versions = new Map([[rootHash(m1), '1.0'], [rootHash(m2), '1.1']]);
  const reader = await FatReader.open(v1.image, m1.partitions.find((p) => p.role === 'boot')!.start);
  working = new Set([createHash('sha256').update(await reader.readFile(m1.slots.a.kernel)).digest('hex')]);
  await reader.close();

  db = join(dir, 'fleet.db');
  port = await freePort();
  server = await startServerProcess(db, ['--repo', repo.repo, '--port', String(port)]);
  url = server.url;
  admin = await adminToken(db);
}, 900_000);

afterAll(async () => {
  await server?.stop();
});

// ---- the server side, as an operator and as its database see it ----

async function ok(method: string, path: string, body?: unknown): Promise<any> {
  const r = await api(url, admin, method, path, body);
  if (r.status !== 200) throw new Error(`${method} ${path}: HTTP ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}

/** A fleet channel with release `version` and a running rollout of it; a provisioning token for it. */
async function rolloutChannel(channel: string, o: { version?: string; stages?: Array<{ percent: number; waitSeconds?: number }>; minSuccessRatio?: number } = {}) {
  const version = o.version ?? '1.1';
  if (channel !== 'stable') await ok('POST', '/v1/admin/channels', { name: channel });
  await ok('POST', '/v1/admin/releases', { version, channel });
  const rollout = await ok('POST', '/v1/admin/rollouts', { version, channel, stages: o.stages ?? [{ percent: 100 }], ...(o.minSuccessRatio !== undefined ? { minSuccessRatio: o.minSuccessRatio } : {}) });
  const prov = await ok('POST', '/v1/admin/provisioning-tokens', { channel });
  return { rolloutId: rollout.id as string, token: prov.token as string };
}

/** The reports the server stored for a device, oldest first, as `state version@slot`. */
function storedReports(deviceId: string): string[] {
  const d = new Database(db, { readonly: true, fileMustExist: true });
  try {
    return (d.prepare('SELECT state, version, slot FROM reports WHERE device_id = ? ORDER BY rowid').all(deviceId) as Array<{ state: string; version: string | null; slot: string }>)
      .map((r) => `${r.state}${r.version ? ` ${r.version}` : ''}@${r.slot}`);
  } finally {
    d.close();
  }
}

async function member(rolloutId: string, deviceId: string): Promise<string | undefined> {
  return ((await ok('GET', `/v1/admin/rollouts/${rolloutId}/devices`)) as Array<{ deviceId: string; state: string }>).find((m) => m.deviceId === deviceId)?.state;
}

async function repoRequests(): Promise<number> {
  const text = (await api(url, admin, 'GET', '/metrics')).body as string;
  return [...text.matchAll(/^edgekit_fleet_http_requests_total\{route="GET \/v1\/device\/repo\/\*",code="20[06]"\} (\d+)$/gm)].reduce((n, m) => n + Number(m[1]), 0);
}

// ---- simulated devices managed by the server ----

interface FleetSim extends SimAgentSetup {
  home: string;
  keyFile: string;
  configDir: string;
}

async function fleetDevice(name: string, o: { deviceId?: string; token?: string; config?: Partial<AgentConfigInput> } = {}): Promise<FleetSim> {
  const home = join(dir, name);
  const configDir = join(home, 'config');
  mkdirSync(configDir, { recursive: true });
  // The config partition as the flasher writes it (src/flash/device-config.ts).
  if (o.deviceId) writeFileSync(join(configDir, 'device-id'), `${o.deviceId}\n`);
  if (o.token) writeFileSync(join(configDir, 'provisioning-token'), `${o.token}\n`);
  const keyFile = join(home, 'data', 'device-key.pem');
  const s = await simAgentDevice({
    image: v1.image,
    manifest: m1,
    copy: join(home, 'disk.img'),
    workingKernels: working,
    versions,
    stateDir: join(home, 'data', 'update'),
    trustedRoot: repo.root,
    config: { fleet: { server: url, keyFile, configDir, retry: 1 }, ...o.config },
  });
  await s.dev.powerOn();
  return { ...s, home, keyFile, configDir };
}

/** One pass as the service runs it after each boot: a fresh process, so a fresh link from /data. */
function pass(s: SimAgentSetup, fleet?: FleetLink) {
  const config = s.config(bootedVersion(s).version);
  return simHost(s).then((host) => runPass({ config, host, log: (l) => s.log.push(l), ...(fleet ? { fleet } : {}) }));
}

function expectBootedVerifies(s: SimAgentSetup): Promise<void> {
  const b = s.dev.booted!;
  const m = /edgekit\.verity=([0-9a-f]+):([0-9a-f]*):(\d+):(\d+)/.exec(b.cmdline)!;
  return verifyVerity(s.dev.disk.path, { offset: s.dev.layout.slots[b.slot].start, rootHash: m[1], salt: m[2], dataBlocks: Number(m[3]), hashOffset: Number(m[4]) * 4096 }).then((r) => {
    expect(r.ok, JSON.stringify(r)).toBe(true);
  });
}

async function slotB(s: SimAgentSetup) {
  const chooser = (await s.dev.host()).chooser;
  return (await chooser.state()).find((x) => x.slot === 'b');
}

describe('update agent managed by edgekit serve (simulated device)', () => {
  it('first boot makes the key; the provisioning token gets it accepted; a rollout offers 1.1; it installs, commits, and the server sees it all', async () => {
    const { rolloutId, token } = await rolloutChannel('first');
    const s = await fleetDevice('first', { deviceId: 'gw-first-0001', token });
    const requestsBefore = await repoRequests();

    expect(existsSync(s.keyFile)).toBe(false);
    expect(await pass(s)).toBe('reboot');
    // The key pair made on first start: ed25519, PKCS#8 PEM, owner-only.
    expect(statSync(s.keyFile).mode & 0o777).toBe(0o600);
    const key = createPrivateKey(readFileSync(s.keyFile, 'utf8'));
    expect(key.asymmetricKeyType).toBe('ed25519');
    const device = await ok('GET', '/v1/admin/devices/gw-first-0001');
    expect(device).toMatchObject({ status: 'accepted', channel: 'first', version: '1.0', slot: 'a', board: 'qemu-x86_64' });
    expect(device.publicKey).toBe(createPublicKey(key).export({ type: 'spki', format: 'pem' }));
    expect(s.log.join('\n')).toMatch(/the fleet server offers 1\.1 \(rollout ro_/);
    // The files came from the server's copy of the repository, with the device's token.
    expect(await repoRequests()).toBeGreaterThan(requestsBefore);
    expect(storedReports('gw-first-0001')).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a']);
    expect(await member(rolloutId, 'gw-first-0001')).toBe('rebooting');

    await s.dev.reboot();
    expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
    expect(await pass(s)).toBe('committed');
    await expectBootedVerifies(s);
    // The service checks in at once after a commit: the inventory shows the new version.
    expect(await pass(s)).toBe('idle');
    expect(s.log.join('\n')).toMatch(/the fleet server offers no release for 1\.1/);
    expect(storedReports('gw-first-0001')).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a', 'committed 1.1@b']);
    expect(await ok('GET', '/v1/admin/devices/gw-first-0001')).toMatchObject({
      version: '1.1', previousVersion: '1.0', slot: 'b', slotState: { a: 'good', b: 'good' }, lastReport: { state: 'committed', version: '1.1' },
    });
    expect(await member(rolloutId, 'gw-first-0001')).toBe('succeeded');
    expect((await ok('GET', `/v1/admin/rollouts/${rolloutId}`)).state).toBe('completed');
    // Accepted once: the provisioning token is not presented again.
    expect(JSON.parse(readFileSync(join(s.home, 'data', 'update', 'fleet', 'link.json'), 'utf8'))).toMatchObject({ registered: true, version: '1.1', previousVersion: '1.0' });
  }, 600_000);

  it('a report the server cannot take is queued on /data and delivered at the next check-in; delivered twice, it counts once', async () => {
    const { rolloutId, token } = await rolloutChannel('outage');
    const s = await fleetDevice('outage', { deviceId: 'gw-outage-0001', token });
    expect(await pass(s)).toBe('reboot');
    await s.dev.reboot();

    // The server dies (no clean shutdown) while the new slot boots and passes its health checks.
    await server.kill();
    expect(await pass(s)).toBe('committed');
    expect(s.log.join('\n')).toMatch(/edgekit-agent: 1 report kept for later: .*ECONNREFUSED/);
    const queueFile = join(s.home, 'data', 'update', 'fleet', 'reports.json');
    const queued = JSON.parse(readFileSync(queueFile, 'utf8'));
    expect(queued).toMatchObject([{ state: 'committed', version: '1.1', running: '1.1', slot: 'b' }]);
    const saved = readFileSync(queueFile);
    // Unreachable: the next check-in is not failed, it waits with backoff.
    expect(await pass(s)).toBe('idle');

    server = await startServerProcess(db, ['--repo', repo.repo, '--port', String(port)]);
    expect(storedReports('gw-outage-0001')).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a']);
    expect(await pass(s)).toBe('idle');
    expect(storedReports('gw-outage-0001')).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a', 'committed 1.1@b']);
    expect(JSON.parse(readFileSync(queueFile, 'utf8'))).toEqual([]);
    expect(await member(rolloutId, 'gw-outage-0001')).toBe('succeeded');
    expect(await ok('GET', '/v1/admin/devices/gw-outage-0001')).toMatchObject({ version: '1.1', slot: 'b', lastReport: { state: 'committed', id: queued[0].id } });

    // A power cut after the server took the report but before the queue was rewritten: the same
    // report goes again, and the server counts it once.
    const counts = (await ok('GET', `/v1/admin/rollouts/${rolloutId}`)).counts;
    writeFileSync(queueFile, saved);
    const link = await FleetLink.open(s.config('1.1'), (l) => s.log.push(l));
    expect(await link.deliver()).toBe(true);
    expect(JSON.parse(readFileSync(queueFile, 'utf8'))).toEqual([]);
    expect(storedReports('gw-outage-0001')).toHaveLength(4);
    expect((await ok('GET', `/v1/admin/rollouts/${rolloutId}`)).counts).toEqual(counts);
  }, 600_000);

  it('a device outside the rollout\'s open stage is offered nothing; one inside installs', async () => {
    // Stage 2 opens only after an hour and with every stage-1 device succeeded: not during this test.
    const { rolloutId, token } = await rolloutChannel('staged', { stages: [{ percent: 50 }, { percent: 100, waitSeconds: 3600 }], minSuccessRatio: 1 });
    const stages = [{ percent: 50, waitSeconds: 0 }, { percent: 100, waitSeconds: 3600 }];
    const ids = Array.from({ length: 64 }, (_, i) => `gw-staged-${i}`);
    const inside = ids.find((id) => stageOfBucket(stages, deviceBucket(rolloutId, id)) === 0)!;
    const outside = ids.find((id) => stageOfBucket(stages, deviceBucket(rolloutId, id)) === 1)!;
    expect(inside && outside).toBeTruthy();

    const out = await fleetDevice('staged-out', { deviceId: outside, token });
    expect(await pass(out)).toBe('idle');
    expect(out.log.join('\n')).toMatch(/the fleet server offers no release for 1\.0/);
    expect(out.log.join('\n')).not.toMatch(/downloading/);
    expect((await slotB(out))?.bootable).toBe(false);
    expect(await ok('GET', `/v1/admin/devices/${outside}`)).toMatchObject({ status: 'accepted', version: '1.0' });
    expect(await member(rolloutId, outside)).toBeUndefined();
    expect(storedReports(outside)).toEqual([]);

    const inn = await fleetDevice('staged-in', { deviceId: inside, token });
    expect(await pass(inn)).toBe('reboot');
    expect(await member(rolloutId, inside)).toBe('rebooting');
    expect((await slotB(inn))?.bootable).toBe(true);
  }, 600_000);

  it('a pending device installs nothing and checks in with backoff; once accepted it installs', async () => {
    const { rolloutId } = await rolloutChannel('stable');
    // No device-id and no provisioning token on the config partition.
    const s = await fleetDevice('pending');
    const link = await FleetLink.open(s.config('1.0'), (l) => s.log.push(l));
    const id = deviceIdFromKey(createPrivateKey(readFileSync(s.keyFile, 'utf8')));
    expect(link.deviceId).toBe(id);
    const waits: number[] = [];
    for (let i = 0; i < 3; i++) {
      expect(await pass(s, link)).toBe('idle');
      expect(link.status).toBe('pending');
      waits.push(link.nextWait('idle'));
    }
    // retry: 1 s, doubling (capped at checkInterval).
    expect(waits).toEqual([1, 2, 4]);
    expect(s.log.join('\n')).toMatch(new RegExp(`device ${id} is waiting for an operator to accept it`));
    expect(s.log.join('\n')).not.toMatch(/downloading|offers 1\.1/);
    expect((await slotB(s))?.bootable).toBe(false);
    expect(await ok('GET', `/v1/admin/devices/${id}`)).toMatchObject({ status: 'pending', version: null });
    expect(await member(rolloutId, id)).toBeUndefined();

    await ok('POST', `/v1/admin/devices/${id}/accept`);
    expect(await pass(s, link)).toBe('reboot');
    expect(link.status).toBe('accepted');
    expect(link.nextWait('reboot')).toBe(3600);
    expect(storedReports(id)).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a']);
  }, 600_000);

  it('the server\'s word alone installs nothing: a release the signed metadata lacks is refused', async () => {
    const { rolloutId, token } = await rolloutChannel('unsigned', { version: '9.9' });
    const s = await fleetDevice('unsigned', { deviceId: 'gw-unsigned-0001', token });
    expect(await pass(s)).toBe('failed');
    expect(s.log.join('\n')).toMatch(/edgekit-agent: failed slot=a running=1\.0: .*release 9\.9 \(offered by the fleet server\) is not in the signed metadata for gateway on qemu-x86_64/);
    expect((await slotB(s))?.bootable).toBe(false);
    expect(storedReports('gw-unsigned-0001')).toEqual(['failed@a']);
    // Not counted against the rollout: the device never ran 9.9.
    expect(await member(rolloutId, 'gw-unsigned-0001')).toBe('offered');
  }, 600_000);
});

describe('the fleet server\'s side of the device protocol', () => {
  it('serves the repository to accepted devices only, with ranges, nothing outside metadata/ and targets/', async () => {
    const { token } = await ok('POST', '/v1/admin/provisioning-tokens', { channel: 'stable' });
    const client = new FleetDeviceClient({ server: url, deviceId: 'files-0001', privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken: token });
    const bearer = await client.bearer();
    const get = (path: string, headers: Record<string, string> = {}) => fetch(new URL(path, url), { headers });
    const timestamp = readFileSync(join(repo.repo, 'metadata', 'timestamp.json'));
    expect((await get('/v1/device/repo/metadata/timestamp.json')).status).toBe(401);
    const full = await get('/v1/device/repo/metadata/timestamp.json', { authorization: `Bearer ${bearer}` });
    expect(full.status).toBe(200);
    expect(Buffer.from(await full.arrayBuffer())).toEqual(timestamp);
    const part = await get('/v1/device/repo/metadata/timestamp.json', { authorization: `Bearer ${bearer}`, range: 'bytes=10-' });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 10-${timestamp.length - 1}/${timestamp.length}`);
    expect(Buffer.from(await part.arrayBuffer())).toEqual(timestamp.subarray(10));
    const beyond = await get('/v1/device/repo/metadata/timestamp.json', { authorization: `Bearer ${bearer}`, range: `bytes=${timestamp.length}-` });
    expect(beyond.status).toBe(416);
    await beyond.arrayBuffer();
    for (const p of ['/v1/device/repo/repo.json', '/v1/device/repo/metadata/../repo.json', '/v1/device/repo/targets/%2e%2e/repo.json', '/v1/device/repo/metadata/.hidden.json']) {
      const r = await get(p, { authorization: `Bearer ${bearer}` });
      await r.arrayBuffer();
      expect(r.status, p).toBe(404);
    }
  });

  it('edgekit serve refuses a bad repository setting with one line naming it, before listening', async () => {
    const empty = join(dir, 'not-a-repo');
    mkdirSync(empty, { recursive: true });
    for (const [args, message] of [
      [['--repo', empty], `edgekit: --repo ${empty}: not a release repository (no metadata/timestamp.json; make one with edgekit repo init)`],
      [['--payloads-url', 'https://cdn.example/targets/'], 'edgekit: --payloads-url needs --repo (the server hands out the metadata, the payloads come from there)'],
      [['--repo', repo.repo, '--payloads-url', 'ftp://cdn.example/targets/'], 'edgekit: --payloads-url: not an http(s) URL: ftp://cdn.example/targets/'],
    ] as const) {
      const r = await edgekit(['serve', '--db', join(dir, 'bad-serve.db'), '--port', '0', ...args]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stderr.trim()).toBe(message);
      expect(r.stdout).not.toMatch(/listening/);
    }
  });

  it('a download that failed before the switch keeps the device in the rollout; a rollback counts as a failure', async () => {
    const { rolloutId, token } = await rolloutChannel('failures');
    const client = new FleetDeviceClient({ server: url, deviceId: 'fail-0001', privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken: token });
    const at = { board: 'qemu-x86_64', version: '1.0', slot: 'a' as const };
    expect((await client.checkIn(at)).release?.version).toBe('1.1');
    await client.report({ id: 'f1', state: 'downloading', version: '1.1', running: '1.0', slot: 'a' });
    await client.report({ id: 'f2', state: 'failed', version: '1.1', running: '1.0', slot: 'a', reason: 'download: connection reset' });
    expect(await member(rolloutId, 'fail-0001')).toBe('downloading');
    expect((await client.checkIn(at)).release?.version).toBe('1.1');
    await client.report({ id: 'f3', state: 'rolled-back', version: '1.1', running: '1.0', slot: 'a' });
    expect(await member(rolloutId, 'fail-0001')).toBe('failed');
    expect((await client.checkIn(at)).release).toBeNull();
  });
});

describe('the agent\'s fleet parts on their own', () => {
  it('the report queue is bounded (progress reports go first), survives a new process, and stops at the first report it cannot deliver', async () => {
    const file = join(dir, 'queue-unit', 'reports.json');
    const logged: string[] = [];
    const q = new ReportQueue(file, 8, (l) => logged.push(l));
    const states: ReportRequest['state'][] = ['downloading', 'installing', 'rebooting', 'failed', 'downloading', 'installing', 'rebooting', 'committed', 'downloading', 'rolled-back'];
    for (const [i, state] of states.entries()) await q.add({ state, version: `1.${i}`, running: '1.0', slot: 'a' });
    const kept = JSON.parse(readFileSync(file, 'utf8')) as ReportRequest[];
    expect(kept.map((r) => r.version)).toEqual(['1.2', '1.3', '1.4', '1.5', '1.6', '1.7', '1.8', '1.9']);
    expect(new Set(kept.map((r) => r.id)).size).toBe(8);
    expect(logged.filter((l) => /report queue full \(8\): dropped the (downloading 1\.0|installing 1\.1)/.test(l))).toHaveLength(2);
    // Full of outcomes: the oldest goes.
    const outcomes = new ReportQueue(join(dir, 'queue-unit', 'outcomes.json'), 8);
    for (let i = 0; i < 9; i++) await outcomes.add({ state: 'failed', version: `2.${i}`, running: '1.0', slot: 'a' });
    expect((await outcomes.pending()).map((r) => r.version)[0]).toBe('2.1');

    // Another process: the same queue from the file. The server takes two, refuses one as malformed, then is gone.
    const again = new ReportQueue(file, 8, (l) => logged.push(l));
    const sent: string[] = [];
    const r = await again.flush(async (rep) => {
      if (sent.length === 3) throw new Error('connect ECONNREFUSED');
      sent.push(rep.version!);
      if (rep.version === '1.3') throw new RefusedReport('HTTP 400: reason: too long');
    });
    expect(r).toMatchObject({ delivered: 2, refused: 1, left: 5 });
    expect(r.error?.message).toBe('connect ECONNREFUSED');
    expect((JSON.parse(readFileSync(file, 'utf8')) as ReportRequest[]).map((x) => x.version)).toEqual(['1.5', '1.6', '1.7', '1.8', '1.9']);
  });

  it('identity: the key is made once and kept; a damaged key or device-id is an error naming the file, never replaced', async () => {
    const home = join(dir, 'identity-unit');
    const o = { keyFile: join(home, 'data', 'device-key.pem'), configDir: join(home, 'config') };
    mkdirSync(o.configDir, { recursive: true });
    const first = await loadDeviceIdentity(o);
    expect(first).toMatchObject({ created: true, idSource: 'key' });
    expect(first.deviceId).toMatch(/^ed25519-[0-9a-f]{32}$/);
    const second = await loadDeviceIdentity(o);
    expect(second).toMatchObject({ created: false, deviceId: first.deviceId });
    writeFileSync(join(o.configDir, 'device-id'), 'gw 7\n');
    await expect(loadDeviceIdentity(o)).rejects.toThrow(`${join(o.configDir, 'device-id')}: not a valid device-id`);
    writeFileSync(join(o.configDir, 'device-id'), 'gw-7\r\n');
    writeFileSync(join(o.configDir, 'provisioning-token'), 'prov_abc\n');
    expect(await loadDeviceIdentity(o)).toMatchObject({ deviceId: 'gw-7', idSource: 'config', provisioningToken: 'prov_abc' });
    const pem = readFileSync(o.keyFile);
    writeFileSync(o.keyFile, pem.subarray(0, 40));
    await expect(loadDeviceIdentity(o)).rejects.toThrow(`${o.keyFile}: not a private key`);
    expect(readFileSync(o.keyFile)).toEqual(pem.subarray(0, 40));
  });
});

describe('bundled agent (agent.mjs) managed by edgekit serve', () => {
  it('first pass: makes its key, is accepted with the provisioning token, installs the offered 1.1 as a delta, under 96 MiB; a pending device installs nothing', async () => {
    const { rolloutId, token } = await rolloutChannel('bundle');
    const home = join(dir, 'bundle');
    mkdirSync(join(home, 'config'), { recursive: true });
    writeFileSync(join(home, 'config', 'device-id'), 'gw-bundle-0001\n');
    writeFileSync(join(home, 'config', 'provisioning-token'), `${token}\n`);
    const partitions = devicePartitionFiles(v1.image, m1, home);
    // update.json as the builder writes it for `update: { fleet: { server } }`, with the paths moved into the test folder.
    const config = JSON.parse(agentConfigText(agentConfigFor({ name: 'gateway', version: '1.0', update: { channel: 'stable', fleet: { server: url } } }, loadBoard('qemu-x86_64').value)));
    expect(config.fleet).toEqual({ server: url, keyFile: '/data/edgekit/device-key.pem', configDir: '/config', retry: 30, queueLimit: 200 });
    expect(config.server).toBeUndefined();
    Object.assign(config, { trustedRoot: repo.root, stateDir: join(home, 'data', 'update') });
    Object.assign(config.fleet, { keyFile: join(home, 'data', 'device-key.pem'), configDir: join(home, 'config') });
    writeFileSync(join(home, 'update.json'), JSON.stringify(config));

    const out = await bundled(['agent', '--once', '--config', join(home, 'update.json'), '--partitions', partitions, '--cmdline', m1.slots.a.cmdline]);
    const text = out.stdout + out.stderr;
    expect(out.status, text).toBe(3);
    expect(statSync(join(home, 'data', 'device-key.pem')).mode & 0o777).toBe(0o600);
    const dl = /edgekit-agent: downloading 1\.1 bytes=(\d+) method=delta slot=a running=1\.0/.exec(text);
    expect(dl, text).toBeTruthy();
    // The delta and the boot files, not the full payload.
    const released = join(repo.repo, 'targets', 'gateway', 'qemu-x86_64', '1.1');
    const size = (re: RegExp) => statSync(join(released, readdirSync(released).find((f) => re.test(f))!)).size;
    expect(Number(dl![1])).toBe(deltaBytes + size(/\.vmlinuz$/) + size(/\.initrd\.img$/));
    const rss = peakRss(text);
    process.stdout.write(`bundled agent, fleet pass applying a delta: peak RSS ${(rss / MiB).toFixed(1)} MiB\n`);
    expect(rss).toBeLessThan(96 * MiB);
    expect(storedReports('gw-bundle-0001')).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a']);
    expect(await member(rolloutId, 'gw-bundle-0001')).toBe('rebooting');
    expect(await ok('GET', '/v1/admin/devices/gw-bundle-0001')).toMatchObject({ status: 'accepted', channel: 'bundle', version: '1.0', slot: 'a' });
    // Slot B holds 1.1: veritysetup checks every block against the signed root hash.
    const v = rootPayload(m2).verity!;
    const b = extractRange(join(home, 'dev', 'part3'), 0, rootPayload(m2).size, join(home, 'slot-b.img'));
    sh('veritysetup', ['verify', '--no-superblock', `--hash-offset=${v.hashOffset}`, `--data-blocks=${v.dataBlocks}`, `--salt=${v.salt}`, b, b, v.rootHash]);
    expect(mtoolsPaths(join(home, 'dev', 'part1'))).toEqual(expect.arrayContaining(['slot-b/vmlinuz', 'slot-b/initrd.img']));
    execFileSync('fsck.vfat', ['-n', join(home, 'dev', 'part1')]);

    // The same device image without a provisioning token: pending, nothing written.
    const pendingHome = join(dir, 'bundle-pending');
    mkdirSync(join(pendingHome, 'config'), { recursive: true });
    const pendingPartitions = devicePartitionFiles(v1.image, m1, pendingHome);
    const before = [1, 3].map((n) => sha256Of(join(pendingHome, 'dev', `part${n}`)));
    const pendingConfig = { ...config, stateDir: join(pendingHome, 'data', 'update'), fleet: { ...config.fleet, keyFile: join(pendingHome, 'data', 'device-key.pem'), configDir: join(pendingHome, 'config') } };
    writeFileSync(join(pendingHome, 'update.json'), JSON.stringify(pendingConfig));
    const p = await bundled(['agent', '--once', '--config', join(pendingHome, 'update.json'), '--partitions', pendingPartitions, '--cmdline', m1.slots.a.cmdline]);
    expect(p.status, p.stdout + p.stderr).toBe(0);
    expect(p.stdout).toMatch(/edgekit-agent: device ed25519-[0-9a-f]{32} is waiting for an operator to accept it/);
    expect(p.stdout).toMatch(/edgekit-agent: pass ended: idle/);
    // Neither the boot partition nor slot B was touched.
    expect([1, 3].map((n) => sha256Of(join(pendingHome, 'dev', `part${n}`)))).toEqual(before);
    expect(readdirSync(join(pendingHome, 'data', 'update'))).not.toContain('download');
  }, 900_000);
});

const sha256Of = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

/** The overlay's agent.mjs under node with the service's options and environment, its peak RSS printed at exit. */
function bundled(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  bundleAgent();
  const agent = join(REPO, 'overlays', 'ota-agent', 'files', 'usr', 'lib', 'edgekit', 'agent.mjs');
  const probe = writeRssProbe(dir);
  const service = /command: (.*) exec \/usr\/bin\/node (.*) \/usr\/lib\/edgekit\/agent\.mjs/.exec(readFileSync(join(REPO, 'overlays', 'ota-agent', 'overlay.yml'), 'utf8'))!;
  const env = Object.fromEntries(service[1].split(' ').map((kv) => kv.split('=')));
  return new Promise((resolve) => {
    const child = spawn('node', [...service[2].split(' '), '--import', probe, agent, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}
