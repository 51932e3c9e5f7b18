/**
 * The update agent (src/ota/agent) on a simulated Raspberry Pi 4: a copy of the built gateway
 * image for rpi4 (U-Boot's boot counter in uboot.env, the builder's boot.scr run by the simulated
 * U-Boot) on a power-cuttable disk, with release 1.1 from a repository behind a local HTTP server.
 * The bootchooser is the one the image names (manifest and update.json: uboot).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { gatewayImages } from './helpers/ota-repo-fixtures.js';
import { testDir, type BuiltImage } from './helpers/built-images.js';
import { agentRepo, publish, type AgentRepo } from './helpers/ota-agent-images.js';
import { startAgentServer, type AgentServer } from './helpers/ota-agent-server.js';
import { agentPass, bootedVersion, serviceReboot, simAgentDevice, type SimAgentSetup } from './helpers/ota-agent-sim.js';
import { expectFsckClean, mtoolsPaths, mtoolsRead } from './helpers/fat-tools.js';
import { fwConfig, fwPrintenv } from './helpers/uboot-env-tools.js';
import { verifyVerity } from '../src/fs/verity.js';
import { FatReader } from '../src/fs/fat-reader.js';
import { PowerCut } from '../src/ota/sim/sim-disk.js';
import { cuttingSteps, type UpdateStepName } from '../src/ota/sim/step-driver.js';
import { ubootChain } from '../src/ota/sim/boot-chains.js';
import type { SignedManifest, ImageManifest } from '../src/image/manifest.js';

let v1: BuiltImage;
let v2: BuiltImage;
let m1: ImageManifest;
let repo: AgentRepo;
let server: AgentServer;
let versions: Map<string, string>;
let working: Set<string>;
let runs = 0;

const manifestOf = (b: BuiltImage) => (JSON.parse(readFileSync(b.manifest, 'utf8')) as SignedManifest).signed;
const rootHash = (m: ImageManifest) => m.payloads.find((p) => p.partition === 'system-a')!.verity!.rootHash;

beforeAll(async () => {
  ({ v1, v2 } = await gatewayImages('rpi4'));
  m1 = manifestOf(v1);
  repo = await agentRepo('agent-rpi');
  await publish(repo, v2.image, '1.1');
  server = await startAgentServer(repo.repo);
  versions = new Map([[rootHash(m1), '1.0'], [rootHash(manifestOf(v2)), '1.1']]);
  const reader = await FatReader.open(v1.image, m1.partitions.find((p) => p.role === 'boot')!.start);
  working = new Set([createHash('sha256').update(await reader.readFile(m1.slots.a.kernel)).digest('hex')]);
  await reader.close();
}, 900_000);

afterAll(async () => {
  await server?.close();
});

async function device(): Promise<SimAgentSetup> {
  const dir = join(testDir(), 'agent-rpi', String(runs++));
  mkdirSync(dir, { recursive: true });
  expect(m1.bootchooser).toBe('uboot');
  const s = await simAgentDevice({
    image: v1.image,
    manifest: m1,
    copy: join(testDir(), 'agent-rpi', 'disk.img'),
    workingKernels: working,
    versions,
    stateDir: join(dir, 'state'),
    trustedRoot: repo.root,
    server: server.url,
    chain: ubootChain('rpi4'),
  });
  await s.dev.powerOn();
  return s;
}

function bootFile(s: SimAgentSetup): string {
  const out = join(testDir(), 'agent-rpi', 'boot.img');
  const buf = Buffer.alloc(s.dev.layout.boot.size);
  const fd = openSync(s.dev.disk.path, 'r');
  readSync(fd, buf, 0, buf.length, s.dev.layout.boot.start);
  closeSync(fd);
  writeFileSync(out, buf);
  return out;
}

/** uboot.env as fw_printenv reads it off the boot partition. */
function cardEnv(s: SimAgentSetup): Record<string, string> {
  const file = join(testDir(), 'agent-rpi', 'uboot.env');
  writeFileSync(file, mtoolsRead(bootFile(s), 'uboot.env'));
  return fwPrintenv(fwConfig(join(testDir(), 'agent-rpi'), [file], 0x4000));
}

async function expectBootedVerifies(s: SimAgentSetup): Promise<void> {
  const b = s.dev.booted!;
  const m = /edgekit\.verity=([0-9a-f]+):([0-9a-f]*):(\d+):(\d+)/.exec(b.cmdline)!;
  const r = await verifyVerity(s.dev.disk.path, { offset: s.dev.layout.slots[b.slot].start, rootHash: m[1], salt: m[2], dataBlocks: Number(m[3]), hashOffset: Number(m[4]) * 4096 });
  expect(r.ok, JSON.stringify(r)).toBe(true);
}

const states = (s: SimAgentSetup) => s.reports.filter((r) => r.state !== 'checking').map((r) => `${r.state}${r.version ? ' ' + r.version : ''}`);

describe('update agent on a simulated Raspberry Pi 4 (U-Boot boot counter)', () => {
  it('installs 1.1 into slot B, U-Boot tries it, the agent commits; it stays through power cuts and counter start-overs', async () => {
    const s = await device();
    expect(await agentPass(s)).toBe('reboot');
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' });
    await serviceReboot(s);
    expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
    expect(s.dev.booted!.cmdline).toMatch(/\sedgekit\.slot=B$/);
    expect(await agentPass(s)).toBe('committed');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'committed 1.1']);
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B', BOOT_A_LEFT: '0', BOOT_B_LEFT: '3' });
    expect(mtoolsPaths(bootFile(s))).toEqual(expect.arrayContaining(['slot-b/vmlinuz', 'slot-b/initrd.img', 'slot-b/cmdline.txt']));
    expectFsckClean(bootFile(s));
    // Committed: more boots than the counter holds (it starts over when it runs out), and a power cut.
    await s.dev.cutAndPowerOn();
    for (let i = 0; i < 8; i++) {
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      await expectBootedVerifies(s);
      await serviceReboot(s);
    }
    expect(await agentPass(s)).toBe('idle');
    await s.dev.close();
  }, 600_000);

  it('a release that is never healthy: failed on each of its 3 tries, rolled back to slot A, which then stays', async () => {
    const s = await device();
    const healthy = (v: string) => v !== '1.1';
    expect(await agentPass(s, { healthy })).toBe('reboot');
    for (let i = 0; i < 3; i++) {
      await serviceReboot(s);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(await agentPass(s, { healthy })).toBe('reboot');
    }
    await serviceReboot(s);
    expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
    expect(await agentPass(s, { healthy })).toBe('rolled-back');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'failed 1.1', 'failed 1.1', 'failed 1.1', 'rolled-back 1.1']);
    // The agent kept the slot U-Boot fell back to: B is out of BOOT_ORDER, so A's counter running
    // out starts A over instead of trying B again.
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'A', BOOT_B_LEFT: '0' });
    for (let i = 0; i < 8; i++) {
      await serviceReboot(s);
      expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
      expect(await agentPass(s, { healthy })).toBe('idle');
    }
    await expectBootedVerifies(s);
    await s.dev.close();
  }, 600_000);

  const cutPoints: UpdateStepName[] = ['invalidate', 'write-slot', 'try-once', 'repair-boot', 'health', 'mark-good'];
  for (const step of cutPoints) {
    it(`power cut right before "${step}": the agent picks up after the power-on and commits 1.1`, async () => {
      const s = await device();
      const late = ['repair-boot', 'health', 'mark-good'].includes(step);
      let armed = !late;
      const steps = cuttingSteps(s.dev.disk, (n) => armed && n === step);
      let committed = false;
      for (let i = 0; i < 12 && !committed; i++) {
        try {
          const out = await agentPass(s, { steps });
          if (out === 'reboot') {
            await serviceReboot(s);
            armed = true;
          }
          committed = out === 'committed';
        } catch (err) {
          if (!(err instanceof PowerCut)) throw err;
          await s.dev.cutAndPowerOn();
        }
      }
      expect(steps.fired).toBe(true);
      expect(committed).toBe(true);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(s.reports.filter((r) => r.state === 'rolled-back')).toEqual([]);
      await expectBootedVerifies(s);
      expectFsckClean(bootFile(s));
      await s.dev.close();
    }, 600_000);
  }
});
