/**
 * Which Debian packages a build needs, resolved (or pinned by a lock), fetched and unpacked.
 *
 * Four groups, resolved separately because they end up in different places:
 *   root    - the image's root filesystem (the spec's packages, with all their dependencies)
 *   initrd  - a root-on-disk image's first stage: busybox and dmsetup for dm-verity
 *   kernel  - the kernel image, its modules and device trees
 *   boot    - bootloader and firmware files (systemd-boot, Pi firmware, U-Boot)
 * From the kernel and boot packages only named files are taken, never their maintainer scripts, so
 * the packages those scripts need are not installed.
 */
import { resolve as resolvePath, dirname } from 'node:path';
import { defaultMirror, defaultSecurityMirror, openArchive, openDebFolder } from '../packages/index.js';
import { unpackDeb, type UnpackedDeb } from '../packages/deb.js';
import type { Archive, LockFile, ResolvedPackage } from '../packages/types.js';
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import type { Kernel } from '../spec/kernel.js';
import type { Progress } from '../util/progress.js';

export const SCRIPT_ONLY_DEPENDENCIES = ['kmod', 'linux-base', 'initramfs-tools', 'linux-initramfs-tool', 'dosfstools', 'dpkg', 'debconf'];
export const INITRD_PACKAGES = ['busybox-static', 'dmsetup'];

export type PackageGroup = 'root' | 'initrd' | 'kernel' | 'boot';

export interface FetchedPackage extends ResolvedPackage {
  group: PackageGroup;
  unpacked: UnpackedDeb;
}

export interface PackageSet {
  archive: Archive;
  groups: Record<PackageGroup, FetchedPackage[]>;
  all: ResolvedPackage[];
}

export async function openBuildArchive(spec: ImageSpec, specFile: string, board: Board, mirrorOverride?: string, offline?: boolean): Promise<Archive> {
  if (spec.debian.debs) return openDebFolder(resolvePath(dirname(specFile), spec.debian.debs));
  const mirror = mirrorOverride ?? spec.debian.mirror ?? (await defaultMirror());
  const securityMirror = spec.debian.securityMirror ?? (mirrorOverride ? undefined : await defaultSecurityMirror(mirror));
  return openArchive({ mirror, securityMirror, suite: spec.debian.suite, components: spec.debian.components, arch: board.arch, offline });
}

export function groupNames(spec: ImageSpec, board: Board, kernel: Kernel, overlayPackages: string[]): Record<PackageGroup, string[]> {
  const boot: string[] = [];
  if (board.boot.firmware === 'uefi') boot.push(board.boot.loaderPackage);
  else {
    if (board.boot.firmwareFiles.length) boot.push(board.boot.firmwarePackage);
    if (board.boot.uboot) boot.push(board.boot.uboot.package);
  }
  return {
    root: [...new Set([...spec.packages, ...overlayPackages])],
    initrd: spec.root === 'disk' ? INITRD_PACKAGES : [],
    kernel: [kernel.package],
    boot,
  };
}

export async function fetchPackages(
  archive: Archive,
  names: Record<PackageGroup, string[]>,
  lock: LockFile | undefined,
  progress: Progress,
): Promise<PackageSet> {
  const groups = { root: [], initrd: [], kernel: [], boot: [] } as Record<PackageGroup, FetchedPackage[]>;
  const all = new Map<string, ResolvedPackage>();
  for (const group of Object.keys(groups) as PackageGroup[]) {
    if (names[group].length === 0) continue;
    progress({ phase: 'resolve', detail: group });
    const excludes = group === 'kernel' || group === 'boot' ? SCRIPT_ONLY_DEPENDENCIES : [];
    const resolved = await archive.resolve(names[group], { lock, excludes });
    for (const pkg of resolved) {
      const path = await archive.fetch(pkg, (done, total) => progress({ phase: 'download', detail: pkg.name, done, total }));
      progress({ phase: 'unpack', detail: pkg.name });
      const unpacked = await unpackDeb(path, pkg.sha256);
      groups[group].push({ ...pkg, group, unpacked });
      all.set(`${pkg.name} ${pkg.version}`, pkg);
    }
  }
  return { archive, groups, all: [...all.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)) };
}
