/**
 * The update agent end to end under QEMU (x86_64, OVMF, systemd-boot with boot counting): a
 * gateway image with the agent boots slot A, pulls release 1.1 from a server on the host (QEMU's
 * user network reaches the host's 127.0.0.1 at 10.0.2.2), writes slot B, reboots into it, passes
 * its health checks and commits. Then release 1.2, whose health command fails: it is written to
 * slot A and tried, and once its tries run out systemd-boot falls back to slot B by itself and the
 * agent reports the rollback. The disk is then read with mtools: the boot entries say the same.
 * Second case: a device managed by `edgekit serve` on the host (device id and provisioning token
 * written into its config partition as the flasher does): it makes its key on first boot, is
 * accepted, gets 1.1 offered by a rollout, installs it from the server's repository, commits, and
 * the server's inventory and reports show it.
 */
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { testDir } from './helpers/built-images.js';
import { bootImage, freePort } from './helpers/qemu-image.js';
import { agentImage, agentRepo, publish, type AgentRepo } from './helpers/ota-agent-images.js';
import { startAgentServer, type AgentServer } from './helpers/ota-agent-server.js';
import { expectFsckClean, mtoolsPaths, mtoolsRead } from './helpers/fat-tools.js';
import { extractRange } from './helpers/image-bytes.js';
import { readFileSync } from 'node:fs';
import type { SignedManifest } from '../src/image/manifest.js';
import { writeDeviceConfig } from '../src/flash/device-config.js';
import Database from 'better-sqlite3';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

async function reportArrives(server: AgentServer, state: string, version: string): Promise<void> {
  for (let i = 0; i < 120 && !server.reports.some((r) => r.state === state && r.version === version); i++) await new Promise((r) => setTimeout(r, 500));
}

describe('update agent under QEMU', () => {
  let repo: AgentRepo;
  let server: AgentServer;
  let images: { v1: string; v2: string; v3: string; v1Manifest: string };

  beforeAll(async () => {
    repo = await agentRepo('e2e');
    const port = await freePort();
    server = await startAgentServer(repo.repo, { port });
    const url = `http://10.0.2.2:${port}`;
    const healthy = { processes: ['dropbear'], server: true, timeout: 120 };
    const v1 = await agentImage(repo, { version: '1.0', server: url, health: healthy });
    images = {
      v1: v1.image,
      v1Manifest: v1.manifest,
      v2: (await agentImage(repo, { version: '1.1', server: url, health: healthy })).image,
      v3: (await agentImage(repo, { version: '1.2', server: url, health: { command: 'echo application self-test failed; exit 1', timeout: 10 } })).image,
    };
    // 1.1 comes with a root delta from 1.0: the device rebuilds its slot with Debian's nodejs.
    await publish(repo, images.v1, '1.0');
    await publish(repo, images.v2, '1.1', ['--delta-from', '1.0']);
  }, 900_000);

  afterAll(async () => {
    await server?.close();
  });

  it('installs 1.1 into slot B and commits it; then 1.2 fails its health checks and rolls back to B by itself', async () => {
    const disk = join(testDir(), 'agent-e2e-disk.img');
    copyFileSync(images.v1, disk);
    const vm = await bootImage(disk, 'qemu-x86_64', { snapshot: false });
    try {
      await vm.waitFor(/root of slot a verified by dm-verity/, 240_000);
      await vm.waitFor(/edgekit-agent: downloading 1\.1 bytes=\d+ method=delta slot=a running=1\.0/, 300_000);
      await vm.waitFor(/edgekit-agent: rebooting 1\.1/, 600_000);
      await vm.waitFor(/root of slot b verified by dm-verity/, 240_000);
      await vm.waitFor(/edgekit-agent: committed 1\.1 slot=b running=1\.1/, 300_000);

      await publish(repo, images.v3, '1.2');
      await vm.waitFor(/edgekit-agent: downloading 1\.2 bytes=\d+ method=full slot=b running=1\.1/, 300_000);
      await vm.waitFor(/edgekit-agent: rebooting 1\.2/, 600_000);
      await vm.waitFor(/root of slot a verified by dm-verity/, 240_000);
      await vm.waitFor(/edgekit-agent: failed 1\.2 slot=a running=1\.2: slot a is unhealthy: health command/, 300_000);
      // Three tries (the board's update.tries), then systemd-boot starts slot B again.
      await vm.waitFor(/root of slot b verified by dm-verity/, 900_000);
      await vm.waitFor(/edgekit-agent: rolled-back 1\.2 slot=b running=1\.1/, 300_000);
      // The console line comes just before the POST: let the report arrive before QEMU stops.
      await reportArrives(server, 'rolled-back', '1.2');
    } finally {
      await vm.stop();
    }
    const text = vm.output.text;
    expect(text.match(/root of slot a verified/g)?.length).toBe(1 + 3);
    expect(text.match(/failed 1\.2 slot=a running=1\.2: slot a is unhealthy/g)?.length).toBe(3);

    // The reports the server got, in order, per release.
    const states = (v: string) => server.reports.filter((r) => r.version === v).map((r) => `${r.state}@${r.slot}`);
    expect(states('1.1')).toEqual(['downloading@a', 'installing@a', 'rebooting@a', 'committed@b']);
    expect(states('1.2')).toEqual(['downloading@b', 'installing@b', 'rebooting@b', 'failed@a', 'failed@a', 'failed@a', 'rolled-back@b']);
    const down = server.reports.find((r) => r.state === 'downloading' && r.version === '1.1')!;
    expect(down.bytes).toBeGreaterThan(0);
    // 1.1's root came as the delta from 1.0 (a consistent-snapshot target), never as the whole payload.
    expect(server.requests.some((r) => /^GET \/targets\/gateway\/qemu-x86_64\/1\.1\/deltas\/1\.0\/[0-9a-f]{64}\.system\.delta/.test(r))).toBe(true);
    expect(server.requests.some((r) => /^GET \/targets\/gateway\/qemu-x86_64\/1\.1\/[0-9a-f]{64}\.system\.squashfs/.test(r))).toBe(false);
    // 1.2 has no delta: the whole payload, with byte ranges.
    expect(server.requests.some((r) => /^GET \/targets\/gateway\/qemu-x86_64\/1\.2\/[0-9a-f]{64}\.system\.squashfs/.test(r))).toBe(true);

    // The boot partition as mtools reads it: 1.1 blessed on B, 1.2 on A out of tries.
    const m = (JSON.parse(readFileSync(images.v1Manifest, 'utf8')) as SignedManifest).signed;
    const boot = m.partitions.find((p) => p.role === 'boot')!;
    const esp = extractRange(disk, boot.start, boot.size, join(testDir(), 'agent-e2e-esp.img'));
    const entries = mtoolsPaths(esp).filter((p) => p.startsWith('loader/entries/') && p.endsWith('.conf'));
    expect(entries).toEqual(['loader/entries/edgekit-2-b.conf', 'loader/entries/edgekit-3-a+0-3.conf']);
    expect(mtoolsRead(esp, 'loader/entries/edgekit-2-b.conf').toString()).toMatch(/edgekit\.slot=b/);
    expectFsckClean(esp);
  }, 3_600_000);
});

describe('update agent under QEMU, managed by edgekit serve on the host', () => {
  let repo: AgentRepo;
  let server: ServerProcess;
  let admin: string;
  let db: string;
  let v1: string;

  beforeAll(async () => {
    repo = await agentRepo('e2e-fleet');
    const port = await freePort();
    db = join(testDir(), 'e2e-fleet.db');
    server = await startServerProcess(db, ['--repo', repo.repo, '--port', String(port)]);
    admin = await adminToken(db);
    const fleet = `http://10.0.2.2:${port}`;
    const healthy = { processes: ['dropbear'], server: true, timeout: 120 };
    v1 = (await agentImage(repo, { version: '1.0', fleet, health: healthy })).image;
    // With a root delta from 1.0, fetched through the server's repository route with the device's token.
    await publish(repo, v1, '1.0');
    await publish(repo, (await agentImage(repo, { version: '1.1', fleet, health: healthy })).image, '1.1', ['--delta-from', '1.0']);
  }, 900_000);

  afterAll(async () => {
    await server?.stop();
  });

  const ok = async (method: string, path: string, body?: unknown) => {
    const r = await api(server.url, admin, method, path, body);
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    return r.body;
  };

  it('first boot: key pair, accepted by its provisioning token, offered 1.1 by a rollout, installs and commits it; the server sees it', async () => {
    await ok('POST', '/v1/admin/releases', { version: '1.1', channel: 'stable' });
    const rollout = await ok('POST', '/v1/admin/rollouts', { version: '1.1', channel: 'stable', stages: [{ percent: 100 }] });
    const { token } = await ok('POST', '/v1/admin/provisioning-tokens', { channel: 'stable', tags: ['qemu'] });
    const disk = join(testDir(), 'agent-e2e-fleet-disk.img');
    copyFileSync(v1, disk);
    // As `edgekit flash --set device-id=... --set provisioning-token=...` writes them.
    await writeDeviceConfig(disk, { 'device-id': 'qemu-gw-0001', 'provisioning-token': token });
    const vm = await bootImage(disk, 'qemu-x86_64', { snapshot: false });
    try {
      await vm.waitFor(/root of slot a verified by dm-verity/, 240_000);
      await vm.waitFor(/edgekit-agent: made this device's key pair: \/data\/edgekit\/device-key\.pem/, 300_000);
      await vm.waitFor(/edgekit-agent: device qemu-gw-0001 \(id from the config partition\), managed by http:\/\/10\.0\.2\.2:\d+/, 60_000);
      await vm.waitFor(/edgekit-agent: the fleet server offers 1\.1 \(rollout ro_[0-9a-f]+\)/, 120_000);
      await vm.waitFor(/edgekit-agent: downloading 1\.1 bytes=\d+ method=delta slot=a running=1\.0/, 120_000);
      await vm.waitFor(/edgekit-agent: rebooting 1\.1/, 600_000);
      await vm.waitFor(/root of slot b verified by dm-verity/, 240_000);
      await vm.waitFor(/edgekit-agent: committed 1\.1 slot=b running=1\.1/, 300_000);
      // The check-in right after the commit tells the server the boot chain's view (the committed
      // report alone already moves the inventory's version and slot).
      for (let i = 0; i < 120 && (await ok('GET', '/v1/admin/devices/qemu-gw-0001')).slotState?.b !== 'good'; i++) await new Promise((r) => setTimeout(r, 500));
    } finally {
      await vm.stop();
    }
    const text = vm.output.text;
    // One key for the device's life: made once, used again after the reboot (the server would refuse another).
    expect(text.match(/made this device's key pair/g)?.length).toBe(1);
    expect(text).not.toMatch(/registered with another key/);
    expect(await ok('GET', '/v1/admin/devices/qemu-gw-0001')).toMatchObject({
      status: 'accepted', channel: 'stable', tags: ['qemu'], board: 'qemu-x86_64', version: '1.1', previousVersion: '1.0', slot: 'b',
      slotState: { a: 'good', b: 'good' }, lastReport: { state: 'committed', version: '1.1' },
    });
    const d = new Database(db, { readonly: true, fileMustExist: true });
    const reports = (d.prepare("SELECT state, version, slot FROM reports WHERE device_id = 'qemu-gw-0001' ORDER BY rowid").all() as Array<{ state: string; version: string; slot: string }>).map((r) => `${r.state} ${r.version}@${r.slot}`);
    d.close();
    expect(reports).toEqual(['downloading 1.1@a', 'installing 1.1@a', 'rebooting 1.1@a', 'committed 1.1@b']);
    const status = await ok('GET', `/v1/admin/rollouts/${rollout.id}`);
    expect(status).toMatchObject({ state: 'completed', counts: { succeeded: 1, failed: 0 } });
    // The metadata and the delta came from the server's copy of the repository.
    const metrics = (await api(server.url, admin, 'GET', '/metrics')).body as string;
    expect(metrics).toMatch(/edgekit_fleet_http_requests_total\{route="GET \/v1\/device\/repo\/\*",code="20[06]"\} [1-9]/);
    const d2 = new Database(db, { readonly: true, fileMustExist: true });
    const reason = (d2.prepare("SELECT reason FROM reports WHERE device_id = 'qemu-gw-0001' AND state = 'downloading'").get() as { reason: string }).reason;
    d2.close();
    expect(reason).toMatch(/^\d+ bytes \(delta\)$/);
  }, 3_600_000);
});
