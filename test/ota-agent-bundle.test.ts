/**
 * The bundled agent (scripts/bundle-agent's one file, as the overlay ships it) run by node as on a
 * device: `update --from <repo folder>` with the device's partitions given as files cut from a real
 * gateway image. Release 1.1 carries a delta from 1.0 (O2's makeDelta), so the agent downloads the
 * delta and rebuilds slot B from slot A. Checked with the real tools: veritysetup verifies slot B
 * against 1.1's signed verity parameters, mtools reads the new boot entry; and the process's peak
 * RSS stays under 96 MiB.
 */
import { execFileSync, spawn } from 'node:child_process';
import { startAgentServer } from './helpers/ota-agent-server.js';
import { mkdirSync, readFileSync, writeFileSync, existsSync, openSync, writeSync, closeSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { REPO, edgekit, testDir } from './helpers/built-images.js';
import { gatewayImages } from './helpers/ota-repo-fixtures.js';
import { bundleAgent, devicePartitionFiles } from './helpers/ota-agent-images.js';
import { extractRange, sh } from './helpers/image-bytes.js';
import { peakRss, writeRssProbe } from './helpers/rss-probe.js';
import { mtoolsPaths, mtoolsRead } from './helpers/fat-tools.js';
import { makeDelta } from '../src/ota/delta/index.js';
import { publishRelease } from '../src/ota/repo/index.js';
import { agentConfigFor, agentConfigText } from '../src/build/update-config.js';
import { loadBoard } from '../src/spec/board.js';
import type { SignedManifest } from '../src/image/manifest.js';

const MiB = 1 << 20;

/** The repository (1.1 with a delta from 1.0), and a device whose partitions are files. */
async function prepare(name: string) {
  const { v1, v2 } = await gatewayImages();
  const m1 = (JSON.parse(readFileSync(v1.manifest, 'utf8')) as SignedManifest).signed;
  const m2 = (JSON.parse(readFileSync(v2.manifest, 'utf8')) as SignedManifest).signed;
  const dir = join(testDir(), 'agent-bundle', name);
  mkdirSync(join(dir, 'dev'), { recursive: true });

  // A repository with 1.1 and its delta from 1.0.
  const repo = join(dir, 'repo');
  const keys = join(dir, 'keys');
  expect((await edgekit(['repo', 'init', repo, '--keys', keys])).code).toBe(0);
  const pay = (m: typeof m1) => m.payloads.find((p) => p.partition === 'system-a')!;
  const p1 = extractRange(v1.image, pay(m1).offset, pay(m1).size, join(dir, 'p1.img'));
  const p2 = extractRange(v2.image, pay(m2).offset, pay(m2).size, join(dir, 'p2.img'));
  const deltaFile = join(dir, 'system.delta');
  const info = await makeDelta(p1, p2, deltaFile);
  await publishRelease({ image: v2.image, repo, version: '1.1', keys, deltas: [{ file: deltaFile, fromVersion: '1.0', fromSha256: pay(m1).sha256, info: info as unknown as Record<string, unknown> }] });

  // The device: its boot partition and slots as files, named like /dev/vda1.. are.
  const partitions = devicePartitionFiles(v1.image, m1, dir);
  const config = JSON.parse(agentConfigText(agentConfigFor({ name: 'gateway', version: '1.0', update: { channel: 'stable' } }, loadBoard('qemu-x86_64').value)));
  Object.assign(config, { trustedRoot: join(repo, 'metadata', 'root.json'), stateDir: join(dir, 'state') });
  writeFileSync(join(dir, 'update.json'), JSON.stringify(config));

  // Peak RSS of the whole process, as the kernel counts it, printed when node exits.
  const probe = writeRssProbe(dir);
  bundleAgent();
  const agent = join(REPO, 'overlays', 'ota-agent', 'files', 'usr', 'lib', 'edgekit', 'agent.mjs');
  expect(existsSync(agent)).toBe(true);
  // Node's options and environment exactly as the overlay's service line has them.
  const service = /command: (.*) exec \/usr\/bin\/node (.*) \/usr\/lib\/edgekit\/agent\.mjs/.exec(readFileSync(join(REPO, 'overlays', 'ota-agent', 'overlay.yml'), 'utf8'))!;
  const env = Object.fromEntries(service[1].split(' ').map((kv) => kv.split('=')));
  const device = ['--partitions', partitions, '--cmdline', `${m1.slots.a.cmdline}`];
  const node = (args: string[]) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn('node', [...service[2].split(' '), '--import', probe, agent, ...args], { env: { ...process.env, ...env } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (b) => (stdout += b));
      child.stderr.on('data', (b) => (stderr += b));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
  /** Offline, from the repository folder. */
  const runAgent = () => node(['update', '--from', repo, '--config', join(dir, 'update.json'), ...device, '--no-reboot']);
  /** One pass of the service, from the repository served over HTTP (node's fetch, ranges). */
  const runService = async () => {
    const server = await startAgentServer(repo);
    try {
      writeFileSync(join(dir, 'update-http.json'), JSON.stringify({ ...config, server: server.url }));
      return { ...(await node(['agent', '--once', '--config', join(dir, 'update-http.json'), ...device])), reports: server.reports };
    } finally {
      await server.close();
    }
  };
  // What the release's files weigh, as the repository folder holds them.
  const released = join(repo, 'targets', 'gateway', 'qemu-x86_64', '1.1');
  const size = (re: RegExp) => statSync(join(released, readdirSync(released).find((f) => re.test(f))!)).size;
  const bootBytes = size(/\.vmlinuz$/) + size(/\.initrd\.img$/);
  return { dir, m1, m2, pay, runAgent, runService, bootBytes, deltaBytes: statSync(deltaFile).size };
}

describe('bundled agent, offline update from a folder', () => {
  it('the service pass over HTTP applies 1.1 as a delta into slot B, verified by veritysetup, under 96 MiB of RSS', async () => {
    const { dir, m2, pay, runService, bootBytes, deltaBytes } = await prepare('delta');
    const r = await runService();
    const out = r.stdout + r.stderr;
    // 3: a reboot is due.
    expect(r.status, out).toBe(3);
    expect(r.reports.map((x) => x.state)).toEqual(['checking', 'downloading', 'installing', 'rebooting']);
    const dl = /edgekit-agent: downloading 1\.1 bytes=(\d+) method=delta slot=a running=1\.0/.exec(out);
    expect(dl, out).toBeTruthy();
    expect(out).toMatch(/edgekit-agent: rebooting 1\.1 slot=a running=1\.0: slot b is tried on the next boot \(3 tries\)/);
    const rss = peakRss(out);
    expect(rss).toBeLessThan(96 * MiB);
    // The delta and the boot files: not the full payload.
    expect(Number(dl![1])).toBe(deltaBytes + bootBytes);
    expect(deltaBytes).toBeLessThan(pay(m2).size);

    // Slot B holds 1.1: veritysetup checks every block against the signed root hash.
    const v = pay(m2).verity!;
    const slotB = extractRange(join(dir, 'dev', 'part3'), 0, pay(m2).size, join(dir, 'slot-b.img'));
    sh('veritysetup', ['verify', '--no-superblock', `--hash-offset=${v.hashOffset}`, `--data-blocks=${v.dataBlocks}`, `--salt=${v.salt}`, slotB, slotB, v.rootHash]);
    const esp = join(dir, 'dev', 'part1');
    expect(mtoolsPaths(esp)).toEqual(expect.arrayContaining(['loader/entries/edgekit-1-a.conf', 'loader/entries/edgekit-2-b+3.conf', 'slot-b/vmlinuz', 'slot-b/initrd.img']));
    const entry = mtoolsRead(esp, 'loader/entries/edgekit-2-b+3.conf').toString();
    expect(entry).toMatch(/edgekit\.slot=b/);
    expect(entry).toContain(`edgekit.verity=${v.rootHash}:`);
    expect(entry).not.toMatch(/edgekit\.slot=a/);
    execFileSync('fsck.vfat', ['-n', esp]);
  }, 900_000);

  it('falls back to the full payload when the delta does not apply to the running slot', async () => {
    const { dir, m1, m2, pay, runAgent, bootBytes } = await prepare('fallback');
    // Slot A is not what the delta was made from: one byte of its squashfs differs.
    const slotA = join(dir, 'dev', 'part2');
    const fd = openSync(slotA, 'r+');
    writeSync(fd, Buffer.from([0x5a]), 0, 1, 100_000);
    closeSync(fd);
    const first = await runAgent();
    expect(first.status, first.stdout + first.stderr).not.toBe(0);
    expect(first.stdout).toMatch(/edgekit-agent: downloading 1\.1 bytes=\d+ method=delta/);
    expect(first.stdout).toMatch(/edgekit-agent: failed 1\.1 .*: /);
    const second = await runAgent();
    expect(second.status, second.stdout + second.stderr).toBe(0);
    const bytes = Number(/edgekit-agent: downloading 1\.1 bytes=(\d+) method=full/.exec(second.stdout)![1]);
    // The whole payload this time, and the boot files (the first run stopped before them).
    expect(bytes).toBe(pay(m2).size + bootBytes);
    expect(second.stdout).toMatch(/edgekit-agent: rebooting 1\.1/);
    const v = pay(m2).verity!;
    const slotB = extractRange(join(dir, 'dev', 'part3'), 0, pay(m2).size, join(dir, 'slot-b.img'));
    sh('veritysetup', ['verify', '--no-superblock', `--hash-offset=${v.hashOffset}`, `--data-blocks=${v.dataBlocks}`, `--salt=${v.salt}`, slotB, slotB, v.rootHash]);
    expect(m1.version).toBe('1.0');
  }, 900_000);
});
