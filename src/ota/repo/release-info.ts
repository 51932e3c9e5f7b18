/**
 * What a release looks like inside targets metadata. Every file of a release is a TUF target
 * named <name>/<board>/<version>/<file>; the release itself is the target
 * <name>/<board>/<version>/manifest.json (the image's signed manifest), whose `custom.edgekit`
 * carries everything a device needs to choose and install it. Custom data is covered by the
 * targets signature, so a device trusts it as much as the hashes.
 */
export const RELEASE_FILE = 'manifest.json';

export interface SlotFiles {
  /** Target paths of the boot files that belong to a slot. */
  kernel: string;
  initrd: string;
  devicetree?: string;
  /**
   * Device trees the boot chain loads from the slot's folder (U-Boot's boot.scr, the Pi firmware's
   * os_prefix), by their path inside it ('broadcom/bcm2711-rpi-4-b.dtb') -> target path. They
   * come with the slot's kernel, so an update that changes the kernel brings its device trees.
   */
  devicetrees?: Record<string, string>;
  /** The kernel command line as built for slot a: the slot writer swaps edgekit.slot=a. */
  cmdline: string;
  root: 'ram' | 'disk';
  /** Target path of the root filesystem payload (squashfs + dm-verity tree) when root is on disk. */
  rootPayload?: string;
}

export interface VerityParams {
  rootHash: string;
  salt: string;
  dataBlocks: number;
  hashOffset: number;
}

/**
 * A binary delta that turns an older release's root payload into this one. Delta files are
 * targets too (their own length and hash); O2's makeDelta output is recorded in `info`.
 */
export interface DeltaRef {
  target: string;
  fromVersion: string;
  /** sha256 of the payload the delta applies to: the device checks its active slot against it. */
  fromSha256: string;
  length: number;
  sha256: string;
  info?: Record<string, unknown>;
}

export interface ReleaseCustom {
  kind: 'release';
  name: string;
  board: string;
  version: string;
  channel: string;
  bootchooser: string;
  slot: SlotFiles;
  verity?: VerityParams;
  /** Set on a fleet rollback: the version whose payloads this release publishes again. */
  republishedFrom?: string;
  deltas: DeltaRef[];
}

export interface FileCustom {
  kind: 'kernel' | 'initrd' | 'devicetree' | 'root' | 'delta';
  name: string;
  board: string;
  version: string;
}

export type EdgekitCustom = ReleaseCustom | FileCustom;

export function releaseDir(name: string, board: string, version: string): string {
  return `${name}/${board}/${version}`;
}

/**
 * Orders release versions: numeric runs compare as numbers, other runs as text, and a version
 * that is a prefix of another is lower (1.2 < 1.2.1 < 1.10).
 */
export function compareVersions(a: string, b: string): number {
  const pa = a.match(/\d+|[^\d]+/g) ?? [];
  const pb = b.match(/\d+|[^\d]+/g) ?? [];
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d/.test(x);
    const ny = /^\d/.test(y);
    if (nx && ny) {
      const d = BigInt(x) - BigInt(y);
      if (d !== 0n) return d < 0n ? -1 : 1;
    } else if (x !== y) {
      if (nx !== ny) return nx ? 1 : -1;
      return x < y ? -1 : 1;
    }
  }
  return 0;
}
