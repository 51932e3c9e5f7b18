/**
 * The boot chains the simulator tests run, each with a small disk image of its board layout and
 * what the chain's own files must say after an update: systemd-boot on a UEFI (GPT) layout, and a
 * Raspberry Pi 4 (MBR) with U-Boot's boot counter or with the firmware's tryboot. The tests in
 * ota-sim.test.ts run the same scenarios on each; only these expectations differ.
 */
import { expect } from 'vitest';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { rpiUbootBaseEnv, configOsPrefix } from '../../src/boot/rpi.js';
import { systemdBootChain, trybootChain, ubootChain, type SimBootChain } from '../../src/ota/sim/boot-chains.js';
import type { SimDevice } from '../../src/ota/sim/device.js';
import type { SimLayout } from '../../src/ota/sim/layout.js';
import type { Slot } from '../../src/ota/slots/bootchooser.js';
import { mtoolsPaths, mtoolsRead } from './fat-tools.js';
import { makeRpiSimImage, makeSimImage, type SimRelease } from './sim-image.js';
import { fwConfig, fwPrintenv } from './uboot-env-tools.js';

export interface ChainCase {
  name: string;
  chain: SimBootChain;
  image(dir: string, release: SimRelease): Promise<{ image: string; layout: SimLayout }>;
  /** How the firmware labels the boots of slot B on trial, first try to last (bootLog entries). */
  trialEntries: string[];
  /** Files an update into slot x leaves in the boot partition (x = 'b'). */
  slotFiles(slot: Slot): string[];
  /**
   * Checks, with mtools and the boot chain's own tools, that `slot` is the committed slot after
   * `updates` committed updates, and that the other slot is not in the running.
   */
  expectCommittedFiles(dev: SimDevice, bootFile: string, slot: Slot, updates: number): Promise<void>;
}

const other = (s: Slot): Slot => (s === 'a' ? 'b' : 'a');

export const CHAINS: ChainCase[] = [
  {
    name: 'systemd-boot (UEFI)',
    chain: systemdBootChain,
    image: (dir, release) => makeSimImage(dir, release),
    trialEntries: ['edgekit-2-b+3.conf', 'edgekit-2-b+2-1.conf', 'edgekit-2-b+1-2.conf'],
    slotFiles: (s) => [`slot-${s}/vmlinuz`, `slot-${s}/initrd.img`],
    async expectCommittedFiles(dev, bootFile, slot, updates) {
      // Generation 1 is the image's slot A; each update adds one. Both blessed: the newest boots.
      const entries = mtoolsPaths(bootFile).filter((p) => p.startsWith('loader/entries/edgekit'));
      const newest = `loader/entries/edgekit-${updates + 1}-${slot}.conf`;
      const previous = `loader/entries/edgekit-${updates}-${other(slot)}.conf`;
      expect(entries.sort()).toEqual([newest, previous].sort());
      expect(await (await dev.chooser()).state()).toEqual(
        (['a', 'b'] as const).map((s) => ({ slot: s, bootable: true, generation: s === slot ? updates + 1 : updates, tries: undefined, good: true, failed: false })),
      );
    },
  },
  {
    name: 'U-Boot boot counter (rpi4)',
    chain: ubootChain('rpi4'),
    image: (dir, release) => makeRpiSimImage(dir, release, { loader: 'uboot', model: 'rpi4' }),
    trialEntries: [2, 1, 0].map((left) => `edgekit: booting slot B (tries left: BOOT_A_LEFT=3 BOOT_B_LEFT=${left})`),
    slotFiles: (s) => [`slot-${s}/vmlinuz`, `slot-${s}/initrd.img`, `slot-${s}/cmdline.txt`],
    async expectCommittedFiles(dev, bootFile, slot) {
      // fw_printenv (libubootenv) reads the environment the update left: the committed slot alone
      // in BOOT_ORDER with full tries, the other out of the running, the shipped variables kept.
      const env = `${dev.disk.path}.uboot.env`;
      writeFileSync(env, mtoolsRead(bootFile, 'uboot.env'));
      const vars = fwPrintenv(fwConfig(join(env, '..'), [env], 0x4000));
      const S = slot.toUpperCase();
      const O = other(slot).toUpperCase();
      expect(vars).toEqual({ ...rpiUbootBaseEnv(), BOOT_ORDER: S, [`BOOT_${S}_LEFT`]: '3', [`BOOT_${O}_LEFT`]: '0' });
      expect(await (await dev.chooser()).state()).toEqual([
        slot === 'a' ? { slot: 'a', bootable: true, tries: 3, good: true, failed: false } : { slot: 'a', bootable: false },
        slot === 'b' ? { slot: 'b', bootable: true, tries: 3, good: true, failed: false } : { slot: 'b', bootable: false },
      ]);
    },
  },
  {
    name: 'Raspberry Pi tryboot (rpi4)',
    chain: trybootChain('rpi4'),
    image: (dir, release) => makeRpiSimImage(dir, release, { loader: 'tryboot', model: 'rpi4' }),
    trialEntries: ['tryboot.txt: slot-b/', 'tryboot.txt: slot-b/', 'tryboot.txt: slot-b/'],
    slotFiles: (s) => [`slot-${s}/vmlinuz`, `slot-${s}/initrd.img`, `slot-${s}/cmdline.txt`, `slot-${s}/bcm2711-rpi-4-b.dtb`],
    async expectCommittedFiles(dev, bootFile, slot) {
      // config.txt names the committed slot; no trial is left to arm.
      expect(configOsPrefix(mtoolsRead(bootFile, 'config.txt').toString('utf8'))).toBe(`slot-${slot}/`);
      expect(mtoolsPaths(bootFile)).not.toContain('tryboot.txt');
      expect(await (await dev.chooser()).state()).toEqual([
        slot === 'a' ? { slot: 'a', bootable: true, good: true } : { slot: 'a', bootable: false },
        slot === 'b' ? { slot: 'b', bootable: true, good: true } : { slot: 'b', bootable: false },
      ]);
    },
  },
];
