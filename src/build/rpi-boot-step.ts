/**
 * The Raspberry Pi boot partition: firmware from raspi-firmware, U-Boot from u-boot-rpi, config.txt,
 * the A/B boot script and environment (src/boot/rpi.ts), slot A's kernel, initramfs and DTBs.
 * Slot B ships empty: the first update fills it.
 */
import { stat } from 'node:fs/promises';
import { rpiBootFiles } from '../boot/rpi.js';
import type { Tree } from '../tree/tree.js';
import type { BootInputs } from './boot-step.js';

type FileRef = { file: string; size: number };

export async function rpiBootPartition(
  tree: Tree,
  b: BootInputs,
  dtb: (rel: string) => FileRef,
  bootPackageFile: (rel: string) => FileRef,
): Promise<void> {
  const boot = b.board.boot;
  if (boot.firmware !== 'rpi') throw new Error('not a Raspberry Pi board');
  const dtbs = Object.fromEntries(b.board.devicetrees.map((rel) => [rel, dtb(rel).file]));
  // The slot's kernel and initramfs were added by the caller at these paths; rpiBootFiles adds
  // them again under the same names, which the tree simply keeps.
  const kernelEntry = tree.get(b.slotA.kernel);
  const initrdEntry = tree.get(b.slotA.initrd);
  const fileOf = (e: ReturnType<Tree['get']>) => (e?.type === 'file' && e.content.kind === 'file' ? e.content.path : '');
  const files = rpiBootFiles({
    model: boot.model,
    firmwareFile: (name: string) => bootPackageFile(`usr/lib/raspi-firmware/${name}`).file,
    firmwareFiles: boot.firmwareFiles,
    configExtra: boot.config.extra,
    loader: boot.loader,
    ubootBin: boot.uboot ? bootPackageFile(boot.uboot.file).file : undefined,
    dtbs,
    dtoverlays: boot.config.dtoverlays,
    dtparams: boot.config.dtparams,
    // Slot B is declared (the script knows it) but ships empty and out of BOOT_ORDER.
    slots: [
      { name: 'A', kernel: fileOf(kernelEntry), initrd: fileOf(initrdEntry), cmdline: b.slotA.cmdline, dtbs },
      { name: 'B', cmdline: '', dtbs: {} },
    ],
    tries: b.tries,
    sourceDateEpoch: b.epoch,
  });
  for (const f of files) {
    if (f.data) tree.file(f.path, f.data);
    else tree.add({ path: f.path, type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: f.file!, size: (await stat(f.file!)).size } });
  }
}
