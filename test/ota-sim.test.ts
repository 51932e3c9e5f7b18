/**
 * The device simulator: an A/B update through writeSlot + tryOnce + reboot + health + markGood on a
 * power-cuttable disk, with faults at every step, bad payloads, full disks, and a thousand seeded
 * random fault schedules. After every boot the harness checks the running payload with
 * src/fs/verity.ts on the image file; the ESP is checked with fsck.vfat and mtools.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, openSync, readSync, closeSync, writeFileSync, writeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SimDevice } from '../src/ota/sim/device.js';
import { Rng } from '../src/ota/sim/rng.js';
import type { UpdateStepName } from '../src/ota/sim/step-driver.js';
import type { ImageManifest } from '../src/image/manifest.js';
import type { SimLayout } from '../src/ota/sim/layout.js';
import { makeTempDir } from './helpers/fs-image-tools.js';
import { expectFsckClean, mtoolsPaths } from './helpers/fat-tools.js';
import { makeRelease, makeSimImage, releasesFromBuiltImage, sha256, type SimRelease } from './helpers/sim-image.js';
import { runUpdate, checkBooted, type RunOptions } from './helpers/sim-harness.js';
import { builtImage } from './helpers/built-images.js';

const tmp = makeTempDir('ota-sim');
afterAll(() => tmp.cleanup());

let v1: SimRelease;
let v2: SimRelease;
let pristine: string;
let layout: SimLayout;
let working: Set<string>;
let roots: Set<string>;

beforeAll(async () => {
  v1 = await makeRelease(tmp.dir, '1.0');
  v2 = await makeRelease(tmp.dir, '2.0');
  ({ image: pristine, layout } = await makeSimImage(tmp.dir, v1));
  working = new Set([sha256(v1.boot.kernel), sha256(v2.boot.kernel)]);
  roots = new Set([v1.verity.rootHash, v2.verity.rootHash]);
});

let copies = 0;
async function device(opts: { seed?: number; writeLimit?: number; lyingSync?: boolean; working?: Set<string>; image?: string } = {}): Promise<SimDevice> {
  const image = join(tmp.dir, `run-${copies++ % 4}.img`);
  copyFileSync(opts.image ?? pristine, image);
  return SimDevice.open({ image, layout, seed: opts.seed ?? 1, tries: 3, workingKernels: opts.working ?? working, writeLimit: opts.writeLimit, lyingSync: opts.lyingSync });
}

/** The ESP of the device's image as a file of its own, for fsck.vfat and mtools. */
function espFile(dev: SimDevice): string {
  const out = join(tmp.dir, 'esp-check.img');
  const buf = Buffer.alloc(dev.layout.boot.size);
  const fd = openSync(dev.disk.path, 'r');
  readSync(fd, buf, 0, buf.length, dev.layout.boot.start);
  closeSync(fd);
  writeFileSync(out, buf);
  return out;
}

/** After a commit the device keeps running the release: through a power cut right away, and reboots. */
async function expectCommitted(dev: SimDevice, release: SimRelease): Promise<void> {
  const after = await dev.cutAndPowerOn();
  for (let i = 0; i < 3; i++) {
    const b = i === 0 ? after : await dev.reboot();
    await checkBooted(dev, b, roots);
    expect(b.cmdline).toContain(`edgekit.verity=${release.verity.rootHash}:`);
  }
  // The blessed entry is the only thing the firmware still renames: nothing is left unclean.
  expectFsckClean(espFile(dev));
}

describe('simulated systemd-boot device', () => {
  it('updates A -> B with writeSlot, tryOnce, reboot, health, markGood; the ESP reads back with mtools', async () => {
    const dev = await device();
    const r = await runUpdate(dev, v2, { knownRoots: roots });
    expect(r.outcome).toBe('committed');
    expect(r.reports.map((x) => x.state)).toEqual(['installing', 'downloading', 'rebooting', 'committed']);
    expect(r.boots.map((b) => b.slot)).toEqual(['a', 'b']);
    expect(r.boots[1].entry).toBe('edgekit-2-b+3.conf');
    const esp = espFile(dev);
    expectFsckClean(esp);
    const paths = mtoolsPaths(esp);
    expect(paths).toContain('loader/entries/edgekit-2-b.conf');
    expect(paths).toContain('loader/entries/edgekit-1-a.conf');
    expect(paths).toContain('slot-b/vmlinuz');
    expect(await (await dev.chooser()).state()).toEqual([
      { slot: 'a', bootable: true, generation: 1, tries: undefined, good: true, failed: false },
      { slot: 'b', bootable: true, generation: 2, tries: undefined, good: true, failed: false },
    ]);
    await expectCommitted(dev, v2);
    // And back: the next update goes to slot A with generation 3.
    const v3 = await makeRelease(tmp.dir, '3.0');
    working.add(sha256(v3.boot.kernel));
    roots.add(v3.verity.rootHash);
    const r3 = await runUpdate(dev, v3, { knownRoots: roots });
    expect(r3.outcome).toBe('committed');
    expect(dev.booted?.slot).toBe('a');
    expect(mtoolsPaths(espFile(dev)).filter((p) => p.startsWith('loader/entries/edgekit'))).toEqual(['loader/entries/edgekit-2-b.conf', 'loader/entries/edgekit-3-a.conf']);
    await dev.close();
  });

  const steps: UpdateStepName[] = ['repair-boot', 'check-installed', 'invalidate', 'write-slot', 'try-once', 'health', 'mark-good'];
  for (const step of steps) {
    it(`power cut right before "${step}": the update still commits`, async () => {
      const dev = await device({ seed: 7 });
      const r = await runUpdate(dev, v2, { knownRoots: roots, cutBeforeStep: step });
      expect(r.outcome).toBe('committed');
      expect(dev.disk.cuts).toBe(1);
      await expectCommitted(dev, v2);
      await dev.close();
    });
  }

  it('a power cut at every disk operation (slot write, ESP writes, first boot, before commit) still commits', async () => {
    const probe = await device();
    await runUpdate(probe, v2, { knownRoots: roots });
    const total = probe.disk.ops;
    await probe.close();
    expect(total).toBeGreaterThan(20);
    for (let op = 1; op <= total; op++) {
      const dev = await device({ seed: op });
      const r = await runUpdate(dev, v2, { knownRoots: roots, cutAtOps: [op] });
      expect(r.outcome, `cut at op ${op}`).toBe('committed');
      expect(dev.disk.cuts, `cut at op ${op}`).toBe(1);
      await expectCommitted(dev, v2);
      await dev.close();
    }
  });

  it('a corrupted payload is refused before anything boots it', async () => {
    const dev = await device();
    const bad = { ...v2, payload: async function* () { const b = Buffer.from(v2.data); b[5000] ^= 1; yield b; } };
    const r = await runUpdate(dev, bad, { knownRoots: roots });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/sha256 is [0-9a-f]{64}, expected/);
    expect((await dev.reboot()).slot).toBe('a');
    await dev.close();
  });

  it('a truncated payload is refused', async () => {
    const dev = await device();
    const short = { ...v2, payload: async function* () { yield v2.data.subarray(0, v2.size - 4096); } };
    const r = await runUpdate(dev, short, { knownRoots: roots });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/ended after \d+ of \d+ bytes/);
    expect((await dev.reboot()).slot).toBe('a');
    await dev.close();
  });

  it('a payload larger than the slot is refused before writing', async () => {
    const dev = await device();
    const r = await runUpdate(dev, { ...v2, size: layout.slots.b.size + 1 }, { knownRoots: roots });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/the slot partition holds/);
    await dev.close();
  });

  it('disk full: a device that refuses writes in slot B reports the update failed and keeps running A', async () => {
    const dev = await device({ writeLimit: layout.slots.b.start + 20_000 });
    const r = await runUpdate(dev, v2, { knownRoots: roots });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/no space left on device/);
    expect((await dev.reboot()).slot).toBe('a');
    await dev.close();
  });

  it('disk full: an ESP with no room for slot B\'s kernel reports the update failed; A still boots and the ESP is clean', async () => {
    const dev = await device();
    await dev.powerOn();
    const esp = await dev.bootVolume();
    await esp.writeFile('filler.bin', Buffer.alloc(esp.freeBytes() - 8 * esp.clusterSize));
    const r = await runUpdate(dev, v2, { knownRoots: roots });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/no room for "slot-b\/vmlinuz"/);
    expect((await dev.reboot()).slot).toBe('a');
    expectFsckClean(espFile(dev));
    await dev.close();
  });

  it('a release whose kernel crashes is tried 3 times per install, falls back to A, and is reported', async () => {
    const dev = await device({ working: new Set([sha256(v1.boot.kernel)]) });
    const r = await runUpdate(dev, v2, { knownRoots: roots, maxRollbacks: 2 });
    expect(r.outcome).toBe('failed');
    expect(r.reason).toMatch(/gave up after 2 rollbacks/);
    expect(r.reports.filter((x) => x.state === 'rolled-back')).toHaveLength(2);
    expect(r.boots.every((b) => b.slot === 'a')).toBe(true);
    const failedBoots = dev.bootLog.filter((b) => !b.booted);
    expect(failedBoots).toHaveLength(6);
    // The reinstall removed the failed entry first, so the generation is again one above slot A's.
    const tries = ['edgekit-2-b+3.conf', 'edgekit-2-b+2-1.conf', 'edgekit-2-b+1-2.conf'];
    expect(failedBoots.map((b) => b.entry)).toEqual([...tries, ...tries]);
    await dev.close();
  });

  it('an unhealthy release is never blessed and rolls back', async () => {
    const dev = await device();
    const r = await runUpdate(dev, v2, { knownRoots: roots, maxRollbacks: 1, health: async (b) => b.slot === 'a' });
    expect(r.outcome).toBe('failed');
    expect(r.reports.some((x) => x.state === 'rolled-back')).toBe(true);
    expect(dev.booted?.slot).toBe('a');
    expect((await (await dev.chooser()).state())[1]).toMatchObject({ slot: 'b', failed: true });
    await dev.close();
  });

  it('a slot corrupted on disk after it was written does not boot (verified boot); the device falls back and reinstalls', async () => {
    const dev = await device();
    let damaged = 0;
    const r = await runUpdate(dev, v2, {
      knownRoots: roots,
      beforeReboot: async (d) => {
        if (damaged++) return;
        const fd = openSync(d.disk.path, 'r+');
        writeSync(fd, Buffer.from([0x55]), 0, 1, layout.slots.b.start + 10_000);
        closeSync(fd);
      },
    });
    expect(r.outcome).toBe('committed');
    expect(r.reports.filter((x) => x.state === 'rolled-back')).toHaveLength(1);
    expect(dev.bootLog.filter((b) => !b.booted && /dm-verity/.test(b.reason))).toHaveLength(3);
    await dev.close();
  });
});

describe('random fault schedules', () => {
  const SCHEDULES = 1000;
  it(`${SCHEDULES} seeded schedules of 1-3 power cuts: always boots a verified slot, every update commits`, async () => {
    const probe = await device();
    await runUpdate(probe, v2, { knownRoots: roots });
    const total = probe.disk.ops;
    await probe.close();
    const rng = new Rng(20240601);
    let cuts = 0;
    for (let i = 0; i < SCHEDULES; i++) {
      const seed = rng.int(2 ** 31);
      const n = 1 + rng.int(3);
      const at = Array.from({ length: n }, () => 1 + rng.int(Math.ceil(total * 1.3)));
      const dev = await device({ seed });
      const opts: RunOptions = { knownRoots: roots, cutAtOps: at };
      const r = await runUpdate(dev, v2, opts);
      // With at most 3 cuts and a healthy release nothing may end in failure.
      expect(r.outcome, `schedule ${i} (seed ${seed}, cuts at ${at})`).toBe('committed');
      cuts += dev.disk.cuts;
      // fsck.vfat and the post-commit cut on every tenth schedule keep the thousand runs quick;
      // every schedule's boots were already checked against dm-verity by the harness.
      if (i % 10 === 0) await expectCommitted(dev, v2);
      await dev.close();
    }
    expect(cuts).toBeGreaterThan(SCHEDULES);
  }, 600_000);

  it('the same schedules catch a disk that skips flushes (a missing fsync)', async () => {
    const rng = new Rng(99);
    const problems: string[] = [];
    for (let i = 0; i < 200 && problems.length === 0; i++) {
      const dev = await device({ seed: rng.int(2 ** 31), lyingSync: true });
      try {
        const r = await runUpdate(dev, v2, { knownRoots: roots, cutAtOps: [1 + rng.int(120)] });
        if (r.outcome !== 'committed') problems.push(`schedule ${i}: ${r.reason}`);
        else await expectCommitted(dev, v2);
      } catch (err) {
        problems.push(`schedule ${i}: ${(err as Error).message.split('\n')[0]}`);
      }
      await dev.close();
    }
    expect(problems.length).toBeGreaterThan(0);
  }, 600_000);
});

describe('simulated device with the real gateway image', () => {
  it('updates the built gateway image under power cuts and boots only verified slots', async () => {
    const built = await builtImage('gateway', 'qemu-x86_64');
    const manifest = (JSON.parse(readFileSync(built.manifest, 'utf8')) as { signed: ImageManifest }).signed;
    const rel = await releasesFromBuiltImage(tmp.dir, built.image, manifest);
    const known = new Set([rel.currentRoot, rel.next.verity.rootHash]);
    const rng = new Rng(7);
    for (const cutAtOps of [[], [5], [40], [1 + rng.int(200), 1 + rng.int(400)]]) {
      const image = join(tmp.dir, 'gateway-run.img');
      copyFileSync(built.image, image);
      const dev = await SimDevice.open({ image, layout: rel.layout, seed: rng.int(1e9), tries: 3, workingKernels: new Set([rel.kernelSha256]) });
      const r = await runUpdate(dev, rel.next, { knownRoots: known, cutAtOps });
      expect(r.outcome, `cuts at ${cutAtOps}`).toBe('committed');
      expect(dev.booted?.slot).toBe('b');
      expect(dev.booted?.cmdline).toContain('edgekit.slot=b');
      expect(dev.booted?.cmdline).toContain('console=ttyS0');
      expectFsckClean(espFile(dev));
      expect(mtoolsPaths(espFile(dev))).toEqual(expect.arrayContaining(['slot-b/vmlinuz', 'slot-b/initrd.img', 'loader/entries/edgekit-2-b.conf', 'loader/entries/edgekit-1-a.conf']));
      await dev.close();
    }
  }, 600_000);
});
