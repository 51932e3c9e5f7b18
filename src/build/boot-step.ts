/**
 * The boot partition: what the board's firmware loads first, and slot A's kernel and initramfs.
 * UEFI boards get systemd-boot on an ESP; Raspberry Pi boards get the Pi firmware, U-Boot and its
 * A/B script (see src/boot/).
 */
import { stat } from 'node:fs/promises';
import { entryConf, entryFileName, loaderConf } from '../boot/systemd-boot.js';
import type { SlotBoot } from '../image/manifest.js';
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import { Tree } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import { sha256OfFile } from '../util/hash.js';
import { deviceTree, type KernelParts } from './kernel-step.js';
import type { FetchedPackage, PackageSet } from './packages-step.js';
import { rpiBootPartition } from './rpi-boot-step.js';

export interface BootInputs {
  board: Board;
  spec: ImageSpec;
  kp: KernelParts;
  pkgs: PackageSet;
  slotA: SlotBoot;
  initrdPath: string;
  tries: number;
  epoch: number;
}

export interface BootPartition {
  tree: Tree;
  kernelSha256: string;
}

export async function bootPartitionTree(b: BootInputs): Promise<BootPartition> {
  const tree = new Tree();
  // The kernel goes in unchanged: byte-identical to the package's.
  tree.add({ path: b.slotA.kernel, type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: b.kp.image.file, size: b.kp.image.size } });
  const { size } = await stat(b.initrdPath);
  tree.add({ path: b.slotA.initrd, type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: b.initrdPath, size } });
  const kernelSha256 = await sha256OfFile(b.kp.image.file);

  if (b.board.boot.firmware === 'uefi') {
    const loader = packageFile(b.pkgs.groups.boot, b.board.boot.loaderFile);
    tree.add({ path: b.board.boot.loaderTarget, type: 'file', mode: 0o644, uid: 0, gid: 0, content: { kind: 'file', path: loader.file, size: loader.size } });
    tree.file('loader/loader.conf', loaderConf());
    tree.file(entryFileName(1, 'a'), entryConf({ title: `${b.spec.name} ${b.spec.version} (slot A)`, slot: 'a', boot: b.slotA }));
  } else {
    await rpiBootPartition(tree, b, (rel) => deviceTree(b.kp, rel), (rel) => packageFile(b.pkgs.groups.boot, rel));
  }
  return { tree, kernelSha256 };
}

/** A file from one of the boot packages, by its path in the package. */
export function packageFile(pkgs: FetchedPackage[], relPath: string): { file: string; size: number } {
  for (const p of pkgs) {
    const e = p.unpacked.entries.find((x) => x.path === relPath);
    if (e?.type === 'file') return { file: e.content!, size: e.size ?? 0 };
  }
  throw new EdgekitError(`${relPath} is not in ${pkgs.map((p) => p.name).join(', ') || 'the boot packages'}`);
}
