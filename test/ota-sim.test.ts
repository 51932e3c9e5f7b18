/**
 * The device simulator: an A/B update through writeSlot + tryOnce + reboot + health + markGood on a
 * power-cuttable disk, with faults at every step, bad payloads, full disks, and a thousand seeded
 * random fault schedules — for each boot chain (test/helpers/sim-chains.ts): systemd-boot on a
 * UEFI layout, U-Boot's boot counter and the firmware's tryboot on a Raspberry Pi 4 layout. After
 * every boot the harness checks the running payload with src/fs/verity.ts on the image file; the
 * boot partition is checked with fsck.vfat and mtools (and uboot.env with fw_printenv).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, openSync, readSync, closeSync, writeFileSync, writeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SimDevice } from '../src/ota/sim/device.js';
import type { SimBootChain } from '../src/ota/sim/boot-chains.js';
import type { UbootAttempt } from '../src/ota/sim/uboot-model.js';
import { FatVolume } from '../src/fs/fat-edit.js';
import { Rng } from '../src/ota/sim/rng.js';
import type { UpdateStepName } from '../src/ota/sim/step-driver.js';
import type { ImageManifest } from '../src/image/manifest.js';
import type { SimLayout } from '../src/ota/sim/layout.js';
import { makeTempDir } from './helpers/fs-image-tools.js';
import { expectFsckClean, mtoolsPaths } from './helpers/fat-tools.js';
import { makeRelease, releasesFromBuiltImage, sha256, type SimRelease } from './helpers/sim-image.js';
import { runUpdate, checkBooted, type RunOptions } from './helpers/sim-harness.js';
import { builtImage } from './helpers/built-images.js';
import { CHAINS } from './helpers/sim-chains.js';

const tmp = makeTempDir('ota-sim');
afterAll(() => tmp.cleanup());

let v1: SimRelease;
let v2: SimRelease;
let v3: SimRelease;
let working: Set<string>;
let roots: Set<string>;

beforeAll(async () => {
  v1 = await makeRelease(tmp.dir, '1.0');
  v2 = await makeRelease(tmp.dir, '2.0');
  v3 = await makeRelease(tmp.dir, '3.0');
  working = new Set([v1, v2, v3].map((v) => sha256(v.boot.kernel)));
  roots = new Set([v1, v2, v3].map((v) => v.verity.rootHash));
});

/** The boot partition of the device's image as a file of its own, for fsck.vfat and mtools. */
function bootFile(dev: SimDevice): string {
  const out = join(tmp.dir, 'boot-check.img');
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
  // What the firmware still writes at boot (a counter) leaves nothing unclean.
  expectFsckClean(bootFile(dev));
}

for (const c of CHAINS) {
  describe(`simulated device: ${c.name}`, () => {
    const dir = join(tmp.dir, c.chain.kind);
    let pristine: string;
    let layout: SimLayout;

    beforeAll(async () => {
      mkdirSync(dir, { recursive: true });
      ({ image: pristine, layout } = await c.image(dir, v1));
    });

    let copies = 0;
    async function device(opts: { seed?: number; writeLimit?: number; lyingSync?: boolean; working?: Set<string> } = {}): Promise<SimDevice> {
      const image = join(dir, `run-${copies++ % 4}.img`);
      copyFileSync(pristine, image);
      return SimDevice.open({ image, layout, chain: c.chain, seed: opts.seed ?? 1, tries: 3, workingKernels: opts.working ?? working, writeLimit: opts.writeLimit, lyingSync: opts.lyingSync });
    }

    it('updates A -> B with writeSlot, tryOnce, reboot, health, markGood, then B -> A; the boot partition reads back with mtools', async () => {
      const dev = await device();
      const r = await runUpdate(dev, v2, { knownRoots: roots });
      expect(r.outcome).toBe('committed');
      expect(r.reports.map((x) => x.state)).toEqual(['installing', 'downloading', 'rebooting', 'committed']);
      expect(r.boots.map((b) => b.slot)).toEqual(['a', 'b']);
      expect(r.boots[1].entry).toBe(c.trialEntries[0]);
      const boot = bootFile(dev);
      expectFsckClean(boot);
      expect(mtoolsPaths(boot)).toEqual(expect.arrayContaining(c.slotFiles('b')));
      await c.expectCommittedFiles(dev, boot, 'b', 1);
      await expectCommitted(dev, v2);
      // And back: the next update goes to slot A.
      const r3 = await runUpdate(dev, v3, { knownRoots: roots });
      expect(r3.outcome).toBe('committed');
      expect(dev.booted?.slot).toBe('a');
      await c.expectCommittedFiles(dev, bootFile(dev), 'a', 2);
      await expectCommitted(dev, v3);
      await dev.close();
    });

    const steps: UpdateStepName[] = ['repair-boot', 'check-installed', 'invalidate', 'write-slot', 'try-once', 'prepare-reboot', 'health', 'mark-good'];
    for (const step of steps) {
      it(`power cut right before "${step}": the update still commits`, async () => {
        const dev = await device({ seed: 7 });
        const r = await runUpdate(dev, v2, { knownRoots: roots, cutBeforeStep: step });
        expect(r.outcome).toBe('committed');
        expect(dev.disk.cuts).toBe(1);
        // One cut costs a trial at most one try: nothing may fall back.
        expect(r.rollbacks).toBe(0);
        await expectCommitted(dev, v2);
        await dev.close();
      });
    }

    it('a power cut at every disk operation (slot write, boot partition writes, first boot, before commit) still commits', async () => {
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
        expect(r.rollbacks, `cut at op ${op}`).toBe(0);
        await expectCommitted(dev, v2);
        await dev.close();
      }
    }, 300_000);

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

    it('disk full: a boot partition with no room for slot B\'s kernel reports the update failed; A still boots and the partition is clean', async () => {
      const dev = await device();
      await dev.powerOn();
      const boot = await dev.bootVolume();
      await boot.writeFile('filler.bin', Buffer.alloc(boot.freeBytes() - 8 * boot.clusterSize));
      const r = await runUpdate(dev, v2, { knownRoots: roots });
      expect(r.outcome).toBe('failed');
      expect(r.reason).toMatch(/no room for "slot-b\/vmlinuz"/);
      expect((await dev.reboot()).slot).toBe('a');
      expectFsckClean(bootFile(dev));
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
      // Each install starts the trial over (systemd-boot: the failed entry is removed first, so
      // the generation is again one above slot A's).
      expect(failedBoots.map((b) => b.entry)).toEqual([...c.trialEntries, ...c.trialEntries]);
      await dev.close();
    });

    it('an unhealthy release is never blessed, rolls back, and is not tried again by the boot chain', async () => {
      const dev = await device();
      const r = await runUpdate(dev, v2, { knownRoots: roots, maxRollbacks: 1, health: async (b) => b.slot === 'a' });
      expect(r.outcome).toBe('failed');
      expect(r.reports.some((x) => x.state === 'rolled-back')).toBe(true);
      expect(dev.booted?.slot).toBe('a');
      const chooser = await dev.chooser();
      const b = (await chooser.state())[1];
      expect(b.good).toBeFalsy();
      expect(b.bootable && !b.failed).toBe(false);
      expect(await chooser.primarySlot()).toBe('a');
      // U-Boot counts every boot: after more boots than the tries, the failed slot must still stay out.
      for (let i = 0; i < 8; i++) expect((await dev.reboot()).slot).toBe('a');
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
          // every schedule's boots were already checked against dm-verity by the harness. Cuts the
          // update did not reach are dropped: what a cut does after the commit is tested apart.
          dev.disk.cancelCuts();
          if (i % 10 === 0) await expectCommitted(dev, v2);
          await dev.close();
        }
        expect(cuts).toBeGreaterThan(SCHEDULES);
      }, 900_000);

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
  });
}

describe('U-Boot: an environment torn by a cut during U-Boot\'s own save', () => {
  // boot.scr saves uboot.env in place on every boot. Under the one-sector rule the shipped
  // environment (~300 bytes, all in its first sector) cannot tear; a larger one, or flash that
  // loses more than the sector being written, can. U-Boot then boots with its built-in
  // environment and boot.scr starts over ("A B", full tries): the tear is made here directly.
  it('at any power-on of an update or after its commit: a verified slot boots, the update commits without a rollback, and comes back after one', async () => {
    const c = CHAINS.find((x) => x.chain.kind === 'uboot')!;
    const dir = join(tmp.dir, 'torn-env');
    mkdirSync(dir, { recursive: true });
    const { image: pristine, layout } = await c.image(dir, v1);
    for (let k = 1; k <= 6; k++) {
      let powerOns = 0;
      const tearing: SimBootChain = {
        kind: 'uboot',
        async powerOn(disk, l, ctx) {
          if (++powerOns === k) {
            const vol = await FatVolume.open(disk, l.boot.start);
            const env = await vol.readFile('uboot.env');
            env.fill(0x5a, 40, 80);
            await vol.rewriteInPlace('uboot.env', env);
          }
          return c.chain.powerOn(disk, l, ctx);
        },
      };
      const image = join(dir, 'run.img');
      copyFileSync(pristine, image);
      const dev = await SimDevice.open({ image, layout, chain: tearing, seed: k, tries: 3, workingKernels: working });
      const r = await runUpdate(dev, v2, { knownRoots: roots });
      expect(r.outcome, `tear at power-on ${k}`).toBe('committed');
      expect(r.rollbacks, `tear at power-on ${k}`).toBe(0);
      // Keep booting: a tear after the commit starts slot A again (verified, the older release)...
      for (let i = 0; i < 4; i++) await checkBooted(dev, await dev.reboot(), roots);
      // ...and the updater brings the release back.
      const again = await runUpdate(dev, v2, { knownRoots: roots });
      expect(again.outcome, `tear at power-on ${k}`).toBe('committed');
      expect(again.rollbacks).toBe(0);
      expect(dev.booted?.slot).toBe('b');
      expect(dev.bootLog.filter((a) => (a as UbootAttempt).envSource === 'built-in'), `tear at power-on ${k}`).toHaveLength(1);
      expectFsckClean(bootFile(dev));
      await dev.close();
    }
  });
});

const BUILT = [
  { board: 'qemu-x86_64', chain: CHAINS[0], console: 'console=ttyS0', slotArg: 'edgekit.slot=b' },
  { board: 'rpi4', chain: CHAINS[1], console: 'console=ttyS1', slotArg: 'edgekit.slot=B' },
];

for (const b of BUILT) {
  describe(`simulated device with the real gateway image (${b.board}, ${b.chain.name})`, () => {
    it('updates the built gateway image under power cuts and boots only verified slots', async () => {
      const built = await builtImage('gateway', b.board);
      const manifest = (JSON.parse(readFileSync(built.manifest, 'utf8')) as { signed: ImageManifest }).signed;
      expect(manifest.bootchooser).toBe(b.chain.chain.kind);
      const dir = join(tmp.dir, `built-${b.board}`);
      mkdirSync(dir, { recursive: true });
      const rel = await releasesFromBuiltImage(dir, built.image, manifest);
      const known = new Set([rel.currentRoot, rel.next.verity.rootHash]);
      const rng = new Rng(7);
      for (const cutAtOps of [[], [5], [40], [1 + rng.int(200), 1 + rng.int(400)]]) {
        const image = join(dir, 'gateway-run.img');
        copyFileSync(built.image, image);
        const dev = await SimDevice.open({ image, layout: rel.layout, chain: b.chain.chain, seed: rng.int(1e9), tries: 3, workingKernels: new Set([rel.kernelSha256]) });
        const r = await runUpdate(dev, rel.next, { knownRoots: known, cutAtOps });
        expect(r.outcome, `cuts at ${cutAtOps}`).toBe('committed');
        expect(dev.booted?.slot).toBe('b');
        expect(dev.booted?.cmdline).toContain(b.slotArg);
        expect(dev.booted?.cmdline).toContain(b.console);
        const boot = bootFile(dev);
        expectFsckClean(boot);
        expect(mtoolsPaths(boot)).toEqual(expect.arrayContaining(b.chain.slotFiles('b')));
        await b.chain.expectCommittedFiles(dev, boot, 'b', 1);
        await dev.close();
      }
    }, 600_000);
  });
}
