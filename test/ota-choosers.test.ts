/**
 * The Raspberry Pi bootchoosers on boot partitions the builder's own code made (rpiBootFiles):
 * - U-Boot: the uboot.env the adapter writes, read by fw_printenv (libubootenv) and compared byte
 *   for byte with mkenvimage's; the adapter's idea of the next slot against what the builder's
 *   boot.scr decides when the simulated U-Boot runs it, over every kind of BOOT_ORDER and counter;
 *   and the scenarios test/boot-uboot.test.ts runs on the real U-Boot under QEMU, replayed on the
 *   simulated one with the same expectations.
 * - tryboot: tryboot.txt and config.txt as the adapter leaves them pass the checks written from
 *   the Raspberry Pi documentation (test/rpi-boot-table.ts); tries are spent by the arming side.
 * - choosing the adapter from the image's update configuration, and the errors when the boot
 *   partition is not laid out for it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FatVolume } from '../src/fs/fat-edit.js';
import { FatReader } from '../src/fs/fat-reader.js';
import { buildUbootEnv, parseUbootEnv } from '../src/boot/uboot.js';
import { configOsPrefix, rpiUbootBaseEnv } from '../src/boot/rpi.js';
import { loadBoard } from '../src/spec/board.js';
import type { ImageSpec } from '../src/spec/image-spec.js';
import { agentConfigFor } from '../src/build/update-config.js';
import { openBlockDevice, partitionDevice, type OpenBlockDevice } from '../src/ota/slots/block-device.js';
import { openBootchooser } from '../src/ota/slots/choosers.js';
import type { Bootchooser, BootchooserKind, Slot } from '../src/ota/slots/bootchooser.js';
import { SimDevice } from '../src/ota/sim/device.js';
import { PowerCut, SimDisk } from '../src/ota/sim/sim-disk.js';
import { writeSlot } from '../src/ota/slots/write-slot.js';
import { trybootChain, ubootChain } from '../src/ota/sim/boot-chains.js';
import type { SimLayout } from '../src/ota/sim/layout.js';
import type { UbootAttempt } from '../src/ota/sim/uboot-model.js';
import { makeTempDir } from './helpers/fs-image-tools.js';
import { expectFsckClean, mtoolsPaths } from './helpers/fat-tools.js';
import { makeRelease, makeRpiSimImage, makeSimImage, sha256, type SimRelease } from './helpers/sim-image.js';
import { fwPrintenvOf, mkenvimage } from './helpers/uboot-env-tools.js';
import { checkRpiBootPartition } from './rpi-boot-table.js';

const tmp = makeTempDir('ota-choosers');
afterAll(() => tmp.cleanup());

const ENV_SIZE = 0x4000;
/** Enough of an arm64 Image for the documentation checks: the "ARM\x64" magic at 0x38. */
function arm64Kernel(seed: string): Buffer {
  const k = Buffer.alloc(24 * 1024);
  k.write(seed);
  k.writeUInt32LE(0x644d5241, 0x38);
  return k;
}

let v1: SimRelease;
let v2: SimRelease;
let working: Set<string>;
beforeAll(async () => {
  v1 = await makeRelease(tmp.dir, '1.0', { kernel: arm64Kernel('kernel 1.0') });
  v2 = await makeRelease(tmp.dir, '2.0', { kernel: arm64Kernel('kernel 2.0') });
  working = new Set([sha256(v1.boot.kernel), sha256(v2.boot.kernel)]);
});

let n = 0;
/** A copy of a Raspberry Pi disk image, its boot partition open for editing, and a chooser as if `running` slot runs. */
async function rpiDisk(loader: 'uboot' | 'tryboot', o: { slotB?: SimRelease } = {}) {
  const dir = join(tmp.dir, `${loader}-${n++}`);
  mkdirSync(dir);
  const { image, layout } = await makeRpiSimImage(dir, v1, { loader, model: 'rpi4', slotB: o.slotB });
  const dev = await openBlockDevice(image);
  const bootDev = partitionDevice(dev, layout.boot.start, layout.boot.size, 'boot');
  const vol = await FatVolume.open(bootDev);
  let cmdline = `edgekit.slot=${loader === 'uboot' ? 'A' : 'a'}`;
  const chooser = await openBootchooser(loader, vol, { tries: 3, cmdline: async () => cmdline });
  return {
    dir,
    image,
    layout,
    dev,
    vol,
    chooser,
    run: (slot: Slot) => (cmdline = `console=ttyS1 edgekit.slot=${loader === 'uboot' ? slot.toUpperCase() : slot}`),
    file: async (path: string) => vol.readFile(path),
    /** Every file of the boot partition, read with our FAT reader from the image file. */
    async files(): Promise<Map<string, Buffer>> {
      const r = await FatReader.open(image, layout.boot.start);
      try {
        const out = new Map<string, Buffer>();
        for (const e of await r.list()) if (!e.isDir) out.set(e.path, await r.readFile(e.path));
        return out;
      } finally {
        await r.close();
      }
    },
    bootImage(): string {
      const out = join(dir, 'boot.fat');
      writeFileSync(out, readFileSync(image).subarray(layout.boot.start, layout.boot.start + layout.boot.size));
      return out;
    },
  };
}

describe('U-Boot bootchooser', () => {
  let d: Awaited<ReturnType<typeof rpiDisk>>;
  beforeAll(async () => {
    d = await rpiDisk('uboot');
  });
  afterAll(() => d.dev.close());

  const envNow = async () => parseUbootEnv(await d.file('uboot.env')).vars;

  it('reads the environment the builder shipped: slot A alone in BOOT_ORDER, slot B empty and out of it', async () => {
    expect(await d.chooser.activeSlot()).toBe('a');
    expect(await d.chooser.primarySlot()).toBe('a');
    expect(await d.chooser.state()).toEqual([
      { slot: 'a', bootable: true, tries: 3, good: true, failed: false },
      { slot: 'b', bootable: false },
    ]);
  });

  it('tries slot B: files first, then one environment write that fw_printenv reads and mkenvimage reproduces byte for byte', async () => {
    await d.chooser.invalidate('b');
    await d.chooser.tryOnce('b', v2.boot);
    const block = await d.file('uboot.env');
    const expected = { ...rpiUbootBaseEnv(), BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' };
    expect(fwPrintenvOf(d.dir, block)).toEqual(expected);
    expect(block.equals(mkenvimage(d.dir, expected, ENV_SIZE))).toBe(true);
    // boot.scr appends edgekit.slot= itself: the slot's cmdline.txt carries none.
    expect((await d.file('slot-b/cmdline.txt')).toString()).toBe(v2.boot.cmdline.replace(/ ?edgekit\.slot=\S+/, '') + '\n');
    expect((await d.file('slot-b/vmlinuz')).equals(v2.boot.kernel)).toBe(true);
    expect(await d.chooser.primarySlot()).toBe('b');
    expect((await d.chooser.state())[1]).toEqual({ slot: 'b', bootable: true, tries: 3, good: false, failed: false });
    expect(await d.chooser.prepareReboot()).toBeUndefined();
    expectFsckClean(d.bootImage());
  });

  it('refuses to invalidate the running slot or to bless a slot that is not running, naming both', async () => {
    await expect(d.chooser.invalidate('a')).rejects.toThrow('uboot bootchooser: cannot invalidate slot a: it is the running slot');
    await expect(d.chooser.markGood('b')).rejects.toThrow('uboot bootchooser: cannot mark slot b good: slot a is running');
  });

  it('marks slot B good when it runs: B alone in BOOT_ORDER with full tries, A out', async () => {
    d.run('b');
    await d.chooser.markGood('b');
    const block = await d.file('uboot.env');
    const expected = { ...rpiUbootBaseEnv(), BOOT_ORDER: 'B', BOOT_A_LEFT: '0', BOOT_B_LEFT: '3' };
    expect(fwPrintenvOf(d.dir, block)).toEqual(expected);
    expect(block.equals(mkenvimage(d.dir, expected, ENV_SIZE))).toBe(true);
    expect(await d.chooser.state()).toEqual([
      { slot: 'a', bootable: false },
      { slot: 'b', bootable: true, tries: 3, good: true, failed: false },
    ]);
  });

  it('gives the committed running slot back the tries U-Boot spent booting it; a trial, another slot or full counters write nothing', async () => {
    // B committed (the test above); boot.scr then spent two of its tries on two boots.
    const spent = { ...(await envNow()), BOOT_ORDER: 'B', BOOT_B_LEFT: '1' };
    await d.vol.writeFile('uboot.env', buildUbootEnv(spent, { size: ENV_SIZE }));
    d.run('a');
    await d.chooser.renewGood!('a');
    expect(await envNow()).toEqual(spent);
    d.run('b');
    await d.chooser.renewGood!('b');
    const expected = { ...spent, BOOT_B_LEFT: '3' };
    const block = await d.file('uboot.env');
    expect(fwPrintenvOf(d.dir, block)).toEqual(expected);
    expect(block.equals(mkenvimage(d.dir, expected, ENV_SIZE))).toBe(true);
    // Full already: the file is not written again (same clusters).
    const before = await d.vol.stat('uboot.env');
    await d.chooser.renewGood!('b');
    expect(await d.vol.stat('uboot.env')).toEqual(before);
    // On trial (B first, A behind it): the trial's counter is the boot chain's to spend.
    const trial = { ...expected, BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '2' };
    await d.vol.writeFile('uboot.env', buildUbootEnv(trial, { size: ENV_SIZE }));
    await d.chooser.renewGood!('b');
    expect(await envNow()).toEqual(trial);
    await d.vol.writeFile('uboot.env', buildUbootEnv(expected, { size: ENV_SIZE }));
  });

  it('an environment U-Boot cannot read (torn, bad CRC) counts as U-Boot\'s defaults, and the next write is a whole, valid one', async () => {
    const torn = await d.file('uboot.env');
    torn.fill(0x5a, 100, 600);
    await d.vol.rewriteInPlace('uboot.env', torn);
    // What U-Boot will do: its built-in environment, so boot.scr's defaults: "A B", full counters.
    expect(await d.chooser.primarySlot()).toBe('a');
    expect((await d.chooser.state()).map((s) => [s.slot, s.good, s.tries])).toEqual([['a', false, 3], ['b', true, 3]]);
    await d.chooser.invalidate('a');
    const expected = { ...rpiUbootBaseEnv(), BOOT_ORDER: 'B', BOOT_A_LEFT: '0', BOOT_B_LEFT: '3' };
    expect(fwPrintenvOf(d.dir, await d.file('uboot.env'))).toEqual(expected);
  });

  it('keeps variables it does not own, byte for byte in U-Boot\'s sorted order', async () => {
    const vars = { ...(await envNow()), zz_site: 'hall 3', ethaddr: 'dc:a6:32:00:00:01' };
    await d.vol.writeFile('uboot.env', buildUbootEnv(vars, { size: ENV_SIZE }));
    await d.chooser.invalidate('a');
    await d.chooser.tryOnce('a', v1.boot);
    const expected = { ...vars, BOOT_ORDER: 'A B', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' };
    const block = await d.file('uboot.env');
    expect(fwPrintenvOf(d.dir, block)).toEqual(expected);
    expect(block.equals(mkenvimage(d.dir, expected, ENV_SIZE))).toBe(true);
  });
});

/** A Pi 4 U-Boot device with both slots holding working releases. */
async function ubootDevice(name: string): Promise<{ dev: SimDevice; layout: SimLayout }> {
  const dir = join(tmp.dir, name);
  mkdirSync(dir);
  const { image, layout } = await makeRpiSimImage(dir, v1, { loader: 'uboot', model: 'rpi4', slotB: v2 });
  return { dev: await SimDevice.open({ image, layout, chain: ubootChain('rpi4'), seed: 3, tries: 3, workingKernels: working, maxBootAttempts: 8 }), layout };
}

describe('the U-Boot adapter and the builder\'s boot.scr agree', () => {
  it('on the slot that boots next, for every kind of BOOT_ORDER and counter values, as the simulated U-Boot runs the script', async () => {
    // U-Boot only ever rewrites uboot.env, which each case replaces: one disk serves them all.
    const { dev } = await ubootDevice('agree');
    const orders = [undefined, '', 'A', 'B', 'A B', 'B A', 'C', 'C B', 'B B A'];
    const counters = [undefined, '', '0', '1', '3', 'junk'];
    let checked = 0;
    for (const order of orders) {
      for (const a of counters) {
        for (const b of counters) {
          const vars: Record<string, string> = { ...rpiUbootBaseEnv() };
          if (order !== undefined) vars.BOOT_ORDER = order;
          if (a !== undefined) vars.BOOT_A_LEFT = a;
          if (b !== undefined) vars.BOOT_B_LEFT = b;
          const vol = await dev.bootVolume();
          await vol.writeFile('uboot.env', buildUbootEnv(vars, { size: ENV_SIZE }));
          await dev.disk.shutdown();
          const chooser = await openBootchooser('uboot', await dev.bootVolume(), { tries: 3, cmdline: async () => 'edgekit.slot=A' });
          const predicted = await chooser.primarySlot();
          const where = `BOOT_ORDER=${order} BOOT_A_LEFT=${a} BOOT_B_LEFT=${b}`;
          if (predicted === null) {
            // No slot the script knows: it resets forever.
            await expect(dev.powerOn(), where).rejects.toThrow(/bricked/);
          } else {
            expect((await dev.powerOn()).slot, where).toBe(predicted);
          }
          checked++;
        }
      }
    }
    expect(checked).toBe(orders.length * counters.length ** 2);
    await dev.close();
  }, 300_000);
});

describe('simulated U-Boot against what the real U-Boot did under QEMU (test/boot-uboot.test.ts)', () => {
  // The same scenarios and expected environments as the QEMU raspi3b tests, which run Debian's
  // u-boot-rpi with the builder's boot.scr on an SD image; here the simulated U-Boot runs them.
  let dev: SimDevice;
  let layout: SimLayout;
  beforeAll(async () => {
    ({ dev, layout } = await ubootDevice('qemu-replay'));
  });
  afterAll(() => dev.close());
  const env = async () => parseUbootEnv(await (await dev.bootVolume()).readFile('uboot.env')).vars;
  const setEnv = async (vars: Record<string, string>) => {
    const vol = await dev.bootVolume();
    await vol.writeFile('uboot.env', buildUbootEnv({ ...(await env()), ...vars }, { size: ENV_SIZE }));
    await dev.disk.shutdown();
  };
  const last = () => dev.bootLog[dev.bootLog.length - 1] as UbootAttempt;

  it('boots slot A from the shipped environment, spending one of its tries', async () => {
    expect((await dev.powerOn()).slot).toBe('a');
    expect(last().console).toContain('edgekit: booting slot A (tries left: BOOT_A_LEFT=2 BOOT_B_LEFT=3)');
    expect(dev.booted?.cmdline).toMatch(/\sedgekit\.slot=A$/);
    expect(await env()).toMatchObject({ BOOT_ORDER: 'A B', BOOT_A_LEFT: '2', BOOT_B_LEFT: '3' });
  });

  it('BOOT_ORDER="B A" with a broken slot B: each power cycle spends a B try, then A boots by itself', async () => {
    const broken = await dev.bootVolume();
    await broken.writeFile('slot-b/vmlinuz', Buffer.from('this is not a kernel\n'));
    await setEnv({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' });
    const before = dev.bootLog.length;
    expect((await dev.powerOn()).slot).toBe('a');
    const attempts = dev.bootLog.slice(before) as UbootAttempt[];
    expect(attempts.map((x) => x.booted)).toEqual([false, false, false, true]);
    expect(attempts.slice(0, 3).map((x) => x.entry)).toEqual([2, 1, 0].map((l) => `edgekit: booting slot B (tries left: BOOT_A_LEFT=3 BOOT_B_LEFT=${l})`));
    expect(await env()).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '2', BOOT_B_LEFT: '0' });
    // Only the shipped variables were written back: nothing U-Boot derived from the board.
    expect(Object.keys(await env())).not.toContain('fdt_addr');
    expect(Object.keys(await env())).not.toContain('fdtfile');
  });

  it('with no tries left anywhere, the counters start over and the board restarts', async () => {
    await setEnv({ BOOT_A_LEFT: '0', BOOT_B_LEFT: '0' });
    const before = dev.bootLog.length;
    await dev.powerOn();
    const first = dev.bootLog[before] as UbootAttempt;
    expect(first.console).toContain('edgekit: no slot has tries left; resetting the counters and restarting');
    expect(first.booted).toBe(false);
  });

  it('a damaged uboot.env: U-Boot falls back to its built-in environment, bootstd finds boot.scr, slot A boots', async () => {
    const vol = await dev.bootVolume();
    const damaged = await vol.readFile('uboot.env');
    damaged.fill(0x5a, 4, 64);
    await vol.rewriteInPlace('uboot.env', damaged);
    await dev.disk.shutdown();
    expect((await dev.powerOn()).slot).toBe('a');
    expect(last().envSource).toBe('built-in');
    expect(await env()).toMatchObject({ BOOT_ORDER: 'A B', BOOT_A_LEFT: '2', BOOT_B_LEFT: '3', bootcmd: 'bootflow scan' });
    expectFsckClean(bootPartitionFile(dev, layout));
  });
});

function bootPartitionFile(dev: SimDevice, layout: SimLayout): string {
  const out = join(tmp.dir, `boot-${n++}.fat`);
  writeFileSync(out, readFileSync(dev.disk.path).subarray(layout.boot.start, layout.boot.start + layout.boot.size));
  return out;
}

describe('the device trees a release carries go into the slot folder with its kernel', () => {
  it('tryboot: the release\'s tree replaces the running slot\'s copy; trees the release lacks are still copied', async () => {
    const t = await rpiDisk('tryboot');
    try {
      const tree = Buffer.from('the release\'s tree');
      await t.chooser.tryOnce('b', { ...v2.boot, devicetrees: { 'bcm2711-rpi-4-b.dtb': tree } });
      const files = await t.files();
      expect(files.get('slot-b/bcm2711-rpi-4-b.dtb')!.equals(tree)).toBe(true);
      const running = [...files.keys()].filter((p) => p.startsWith('slot-a/') && p.endsWith('.dtb'));
      expect(running.length).toBeGreaterThan(0);
      for (const p of running) expect(files.has(p.replace('slot-a/', 'slot-b/')), p).toBe(true);
      expectFsckClean(t.bootImage());
    } finally {
      await t.dev.close();
    }
  });

  it('U-Boot: trees go in by their path inside the folder, and the ones an older release left there go', async () => {
    const u = await rpiDisk('uboot');
    try {
      await u.vol.mkdir('slot-b/broadcom');
      await u.vol.writeFile('slot-b/broadcom/old-board.dtb', Buffer.from('an older release\'s tree'));
      const tree = Buffer.from('the release\'s tree');
      await u.chooser.tryOnce('b', { ...v2.boot, devicetrees: { 'broadcom/bcm2711-rpi-4-b.dtb': tree } });
      const files = await u.files();
      expect(files.get('slot-b/broadcom/bcm2711-rpi-4-b.dtb')!.equals(tree)).toBe(true);
      expect(files.has('slot-b/broadcom/old-board.dtb')).toBe(false);
      expectFsckClean(u.bootImage());
      // A path out of the slot folder is refused, and the slot is not switched to.
      await expect(u.chooser.tryOnce('b', { ...v2.boot, devicetrees: { '../boot.scr.dtb': tree } })).rejects.toThrow(/release device tree "\.\.\/boot\.scr\.dtb": not a \.dtb path inside the slot folder/);
      expect(await u.chooser.primarySlot()).toBe('a');
    } finally {
      await u.dev.close();
    }
  });
});

describe('tryboot bootchooser', () => {
  let d: Awaited<ReturnType<typeof rpiDisk>>;
  beforeAll(async () => {
    d = await rpiDisk('tryboot');
  });
  afterAll(() => d.dev.close());

  /** The partition as the firmware sees it after `reboot "0 tryboot"`: tryboot.txt in config.txt's place. */
  const asTryboot = (files: Map<string, Buffer>) => new Map([...files, ['config.txt', files.get('tryboot.txt')!]]);

  it('the builder\'s partition: config.txt names slot A, no trial', async () => {
    expect(configOsPrefix((await d.file('config.txt')).toString())).toBe('slot-a/');
    expect(await d.chooser.state()).toEqual([{ slot: 'a', bootable: true, good: true }, { slot: 'b', bootable: false }]);
    expect(await d.chooser.prepareReboot()).toBeUndefined();
    expect(checkRpiBootPartition('rpi4', await d.files())).toEqual([]);
  });

  it('tries slot B with a tryboot.txt the firmware documentation accepts, the slot\'s device tree beside its kernel', async () => {
    await d.chooser.tryOnce('b', v2.boot);
    const files = await d.files();
    expect(checkRpiBootPartition('rpi4', asTryboot(files))).toEqual([]);
    expect(configOsPrefix(files.get('tryboot.txt')!.toString())).toBe('slot-b/');
    expect(files.get('tryboot.txt')!.toString()).toMatch(/^# edgekit trial: slot b, tries left 3\n/);
    // Everything but the slot folder is config.txt's.
    expect(files.get('tryboot.txt')!.toString().split('\n').slice(1).join('\n')).toBe(files.get('config.txt')!.toString().replace('os_prefix=slot-a/', 'os_prefix=slot-b/'));
    expect(files.get('slot-b/cmdline.txt')!.toString()).toMatch(/ edgekit\.slot=b\n$/);
    expect(files.get('slot-b/bcm2711-rpi-4-b.dtb')!.equals(files.get('slot-a/bcm2711-rpi-4-b.dtb')!)).toBe(true);
    expect(await d.chooser.primarySlot()).toBe('b');
    expect(mtoolsPaths(d.bootImage())).toContain('tryboot.txt');
    expectFsckClean(d.bootImage());
  });

  it('each tryboot reboot spends a try; out of tries, the trial is failed and the reboot is a plain one', async () => {
    for (const left of [2, 1, 0]) {
      expect(await d.chooser.prepareReboot()).toBe('0 tryboot');
      expect((await d.file('tryboot.txt')).toString()).toMatch(new RegExp(`^# edgekit trial: slot b, tries left ${left}\\n`));
    }
    expect(await d.chooser.prepareReboot()).toBeUndefined();
    expect(await d.chooser.primarySlot()).toBe('a');
    expect((await d.chooser.state())[1]).toEqual({ slot: 'b', bootable: false, tries: 0, good: false, failed: true });
  });

  it('refuses to invalidate the committed slot, and blesses slot B by rewriting config.txt; the partition still passes the documentation checks', async () => {
    d.run('b');
    await expect(d.chooser.invalidate('a')).rejects.toThrow('tryboot bootchooser: cannot invalidate slot a: config.txt boots it (it is the committed slot)');
    await d.chooser.markGood('b');
    const files = await d.files();
    expect(configOsPrefix(files.get('config.txt')!.toString())).toBe('slot-b/');
    expect(files.has('tryboot.txt')).toBe(false);
    expect(checkRpiBootPartition('rpi4', files)).toEqual([]);
    expect(await d.chooser.state()).toEqual([{ slot: 'a', bootable: false }, { slot: 'b', bootable: true, good: true }]);
  });

  it('a simulated Pi boots the trial only after a tryboot reboot, and config.txt\'s slot after a power cut', async () => {
    const dir = join(tmp.dir, 'tryboot-boots');
    mkdirSync(dir);
    const { image, layout } = await makeRpiSimImage(dir, v1, { loader: 'tryboot', model: 'rpi4' });
    const dev = await SimDevice.open({ image, layout, chain: trybootChain('rpi4'), seed: 5, tries: 3, workingKernels: working });
    await dev.powerOn();
    const chooser = await dev.chooser();
    await writeSlot(dev.slotDevice('b'), v2.payload(), { sha256: v2.sha256, size: v2.size, verity: v2.verity });
    await chooser.tryOnce('b', v2.boot);
    expect((await dev.reboot()).slot).toBe('a'); // a plain reboot: config.txt
    expect((await dev.reboot(await chooser.prepareReboot())).slot).toBe('b');
    expect((await dev.cutAndPowerOn()).slot).toBe('a'); // the flag does not survive the power
    expect((await dev.reboot('0 tryboot')).slot).toBe('b');
    expect((await dev.reboot()).slot).toBe('a'); // one-shot
    await dev.close();
  });
});

describe('the bootchooser the image names', () => {
  const spec = { name: 'gateway', version: '1.0', update: { channel: 'stable' } } as unknown as ImageSpec;

  it('the builder writes each board\'s bootchooser into update.json', () => {
    for (const [board, kind] of [['rpi4', 'uboot'], ['rpi3', 'uboot'], ['qemu-x86_64', 'systemd-boot'], ['generic-arm64', 'systemd-boot']] as const) {
      expect(agentConfigFor(spec, loadBoard(board).value).bootchooser, board).toBe(kind);
    }
  });

  it('opens the chooser of each kind on a partition laid out for it, and refuses a partition laid out for another, saying which', async () => {
    const dir = join(tmp.dir, 'mismatch');
    mkdirSync(dir);
    const uefi = await makeSimImage(dir, v1);
    const open = async (image: string, layout: SimLayout, kind: BootchooserKind): Promise<Bootchooser> => {
      const dev: OpenBlockDevice = await openBlockDevice(image);
      try {
        return await openBootchooser(kind, await FatVolume.open(partitionDevice(dev, layout.boot.start, layout.boot.size)), { tries: 3 });
      } finally {
        await dev.close();
      }
    };
    const ub = await rpiDisk('uboot');
    const tb = await rpiDisk('tryboot');
    await ub.dev.close();
    await tb.dev.close();
    expect((await open(uefi.image, uefi.layout, 'systemd-boot')).kind).toBe('systemd-boot');
    expect((await open(ub.image, ub.layout, 'uboot')).kind).toBe('uboot');
    expect((await open(tb.image, tb.layout, 'tryboot')).kind).toBe('tryboot');
    await expect(open(ub.image, ub.layout, 'systemd-boot')).rejects.toThrow(/^the boot partition has no loader\/entries folder: it is not laid out for the systemd-boot bootchooser the update configuration names$/);
    await expect(open(uefi.image, uefi.layout, 'uboot')).rejects.toThrow(/^the boot partition has no boot\.scr: it is not laid out for the uboot bootchooser/);
    await expect(open(ub.image, ub.layout, 'tryboot')).rejects.toThrow(/^the boot partition has a config\.txt that names no slot folder \(os_prefix=\): it is not laid out for the tryboot bootchooser/);
  });
});

describe('every bootchooser write leaves its file old or new after a power cut at any disk operation', () => {
  type Op = { loader: 'uboot' | 'tryboot'; what: string; running: Slot; setup?: (c: Bootchooser) => Promise<void>; run: (c: Bootchooser) => Promise<unknown>; file: string };
  const ops: Op[] = [
    { loader: 'uboot', what: 'tryOnce(b)', running: 'a', run: (c) => c.tryOnce('b', v2.boot), file: 'uboot.env' },
    { loader: 'uboot', what: 'markGood(b)', running: 'b', setup: (c) => c.tryOnce('b', v2.boot), run: (c) => c.markGood('b'), file: 'uboot.env' },
    { loader: 'tryboot', what: 'tryOnce(b)', running: 'a', run: (c) => c.tryOnce('b', v2.boot), file: 'tryboot.txt' },
    { loader: 'tryboot', what: 'prepareReboot()', running: 'a', setup: (c) => c.tryOnce('b', v2.boot), run: (c) => c.prepareReboot(), file: 'tryboot.txt' },
    // config.txt has no fallback: the firmware boots whatever it says.
    { loader: 'tryboot', what: 'markGood(b)', running: 'b', setup: (c) => c.tryOnce('b', v2.boot), run: (c) => c.markGood('b'), file: 'config.txt' },
  ];
  for (const o of ops) {
    it(`${o.loader}: ${o.what} -> ${o.file}`, async () => {
      const dir = join(tmp.dir, `sweep-${o.loader}-${n++}`);
      mkdirSync(dir);
      const { image, layout } = await makeRpiSimImage(dir, v1, { loader: o.loader, model: 'rpi4' });
      const slotArg = (s: Slot) => `edgekit.slot=${o.loader === 'uboot' ? s.toUpperCase() : s}`;
      const chooserOn = async (disk: SimDisk, running: Slot) =>
        openBootchooser(o.loader, await FatVolume.open(partitionDevice(disk, layout.boot.start, layout.boot.size)), { tries: 3, cmdline: async () => slotArg(running) });
      const fileNow = async (path: string) => {
        const r = await FatReader.open(path, layout.boot.start);
        try {
          return await r.readFile(o.file).catch(() => undefined);
        } finally {
          await r.close();
        }
      };
      {
        const disk = await SimDisk.open(image, { seed: 1 });
        if (o.loader === 'uboot') {
          // An environment past one sector: the adapter's writes must not rely on a change
          // fitting in the sector the device writes whole (the shipped one does fit).
          const vol = await FatVolume.open(partitionDevice(disk, layout.boot.start, layout.boot.size));
          const vars = parseUbootEnv(await vol.readFile('uboot.env')).vars;
          await vol.writeFile('uboot.env', buildUbootEnv({ ...vars, zz_site_notes: 'x'.repeat(1500) }, { size: ENV_SIZE }));
        }
        // Opened after that write: a FatVolume keeps the FAT it read.
        await o.setup?.(await chooserOn(disk, 'a'));
        await disk.shutdown();
        await disk.close();
      }
      const before = await fileNow(image);
      const base = join(dir, 'base.img');
      copyFileSync(image, base);
      const probe = await SimDisk.open(image, { seed: 1 });
      await o.run(await chooserOn(probe, o.running));
      await probe.shutdown();
      const total = probe.ops;
      await probe.close();
      const after = await fileNow(image);
      expect(after?.equals(before ?? Buffer.alloc(0)), 'the operation changes the file').toBe(false);
      let olds = 0;
      // Several seeds per cut: which unflushed sectors survive is random, a tear must not hide.
      for (let run = 0; run < total * 6; run++) {
        const op = 1 + (run % total);
        copyFileSync(base, image);
        const disk = await SimDisk.open(image, { seed: run });
        const c = await chooserOn(disk, o.running);
        disk.cutAfter(op);
        await expect(o.run(c), `cut at op ${op} of ${total}`).rejects.toBeInstanceOf(PowerCut);
        await disk.powerCut();
        await disk.close();
        const got = await fileNow(image);
        const same = (x: Buffer | undefined) => (x === undefined ? got === undefined : got !== undefined && got.equals(x));
        expect(same(before) || same(after), `${o.file} after a cut at op ${op} of ${total} is neither the old nor the new one`).toBe(true);
        if (o.file === 'uboot.env' && got) expect(() => parseUbootEnv(got)).not.toThrow();
        if (same(before)) olds++;
      }
      // Cuts before the switch leave the old file (whether the last one lands after it depends on
      // which unflushed sectors survive).
      expect(olds).toBeGreaterThan(0);
    });
  }
});
