/**
 * Which drives a technician can flash, and never a wrong one. A platform lists the machine's whole
 * disks with the facts that matter (system disk, mounted, read-only, removable); checkTarget turns
 * those facts into a yes or a one-line refusal; watchForNewDrives spots a card or stick plugged in
 * after it started (tray mode, rpiboot). Only Linux is implemented (src/flash/drives-linux.ts).
 */
import { access, constants, realpath, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { EdgekitError } from '../util/errors.js';
import { linuxDrives } from './drives-linux.js';

export { linuxDrives } from './drives-linux.js';
export type { LinuxDriveOptions } from './drives-linux.js';

export type DriveBus = 'usb' | 'sd' | 'mmc' | 'nvme' | 'sata' | 'virtio' | 'loop' | 'other';

/** One mounted (or swapped-on) filesystem on a drive: a partition, the disk itself or a holder. */
export interface DriveMount {
  /** The block device the filesystem is on: /dev/sdb1, /dev/dm-0 (which sits on a partition). */
  device: string;
  /** Where it is mounted, or "[SWAP]". */
  mountpoint: string;
}

export interface Drive {
  /** The whole disk: /dev/sdb, /dev/mmcblk0, /dev/loop3. */
  path: string;
  /** Stable port path (/dev/disk/by-path/...) when udev made one: the same slot gives the same path. */
  byPath?: string;
  /** Bytes. */
  size: number;
  /** Vendor and model as the device reports them; for a loop device, its backing file. */
  model?: string;
  serial?: string;
  /** 'sd' is an SD card in an MMC slot, 'mmc' an eMMC chip; a card in a USB reader is 'usb'. */
  bus: DriveBus;
  /** Something a technician plugs in: the kernel's removable flag, or any USB or SD drive. */
  removable: boolean;
  readOnly: boolean;
  /** Every mountpoint on the disk, its partitions and the devices stacked on them ("[SWAP]" for swap). */
  mountpoints: string[];
  /** The same, with the device each one is on. */
  mounts: DriveMount[];
  /** The disk's partitions (/dev/sdb1, ...): flashing one of those is refused with a hint. */
  partitions: string[];
  /** Holds the running root filesystem, /boot, /boot/efi, /usr, /var or active swap. */
  system: boolean;
  /** Holds the running root filesystem: refused even with --force. */
  holdsRoot: boolean;
  /** Why it cannot be flashed as it is ("non-removable" is the only one --force overrides). */
  reasons: string[];
  eligible: boolean;
}

export interface DrivePlatform {
  list(): Promise<Drive[]>;
  /** Flush the drive and power it off / detach it, so it can be pulled; a regular file: nothing. */
  eject(path: string): Promise<void>;
}

/** The reason --force overrides: the disk is not something one plugs in. */
export const NON_REMOVABLE = 'non-removable';

export interface TargetInfo {
  /** The path as given (a /dev/disk/by-path link stays a link: it names the port). */
  path: string;
  kind: 'file' | 'device';
  /** For a file: whether it exists already (flashing creates it otherwise). */
  exists: boolean;
  drive?: Drive;
}

/** The platform for this machine; other systems are not supported yet. */
export function defaultPlatform(): DrivePlatform {
  if (process.platform !== 'linux') {
    throw new EdgekitError(`flashing drives is supported on Linux only (this is ${process.platform}); write the image to a file instead`);
  }
  return linuxDrives();
}

/** Sizes in messages: decimal units like the label on a card, and the exact bytes. */
export function formatSize(bytes: number): string {
  const units: Array<[number, string]> = [
    [1e12, 'TB'],
    [1e9, 'GB'],
    [1e6, 'MB'],
    [1e3, 'kB'],
  ];
  for (const [n, u] of units) if (bytes >= n) return `${(bytes / n).toFixed(1)} ${u}`;
  return `${bytes} bytes`;
}

/** The reason a drive is too small for an image, in the words checkTarget and `edgekit devices` use. */
export function tooSmallReason(driveSize: number, imageSize: number): string | undefined {
  if (driveSize >= imageSize) return undefined;
  return `too small: ${formatSize(driveSize)} (${driveSize} bytes) < image ${formatSize(imageSize)} (${imageSize} bytes)`;
}

async function realOrSelf(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return resolve(path);
  }
}

/**
 * Decide whether `path` may be written with an image of `imageSize` bytes. A regular file, or a
 * new file in an existing writable directory, is always fine. A device must be a whole disk the
 * platform knows, not a system disk (never, whatever --force says), not mounted or in use, not
 * read-only, big enough, and removable unless `force`. Refusals throw one EdgekitError line naming
 * the device and every reason.
 */
export async function checkTarget(
  path: string,
  opts: { imageSize: number; force?: boolean; platform?: DrivePlatform },
): Promise<TargetInfo> {
  const info = await stat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new EdgekitError(`${path}: cannot inspect the target: ${err.code ?? err.message}`);
  });
  // A regular file is never a drive; anything else is matched against the drives the platform lists
  // (a fake platform's device paths need not be block devices, a real one's always are).
  if (info?.isFile()) return checkFileTarget(path, true);
  const real = await realOrSelf(path);
  // Every drive the machine lists exists, so a missing path is none of them: the listing (lsblk,
  // some ms) is skipped unless the caller gave its own platform, whose drives need not exist.
  if (!info && !opts.platform) return missingTarget(path, real);
  const platform = opts.platform ?? defaultPlatform();
  const drives = await platform.list();
  const pathsOf = async (paths: string[]) => Promise.all(paths.map(realOrSelf));
  for (const d of drives) {
    if ((await pathsOf([d.path]))[0] === real) return { path, kind: 'device', exists: true, drive: refuseIneligible(path, d, opts) };
    const parts = await pathsOf(d.partitions);
    const i = parts.indexOf(real);
    if (i >= 0) {
      throw new EdgekitError(`${path}: is a partition (${d.partitions[i]}); flash the whole disk instead: --to ${d.path}`);
    }
  }
  if (!info) return missingTarget(path, real);
  if (info.isBlockDevice()) {
    throw new EdgekitError(`${path}: not a drive edgekit can flash (a virtual, RAID, optical or empty device); see 'edgekit devices --all'`);
  }
  throw new EdgekitError(`${path}: not a regular file or a drive`);
}

/** A target that does not exist yet: a new file, unless it names a device that is not there. */
async function missingTarget(path: string, real: string): Promise<TargetInfo> {
  // Writing to a mistyped /dev/sdX would create a RAM-backed file and "succeed": refuse instead.
  if (real.startsWith('/dev/')) throw new EdgekitError(`${path}: no such device (is it plugged in? see 'edgekit devices')`);
  return checkFileTarget(path, false);
}

async function checkFileTarget(path: string, exists: boolean): Promise<TargetInfo> {
  const where = exists ? path : dirname(resolve(path));
  try {
    if (!exists && !(await stat(where)).isDirectory()) throw new EdgekitError(`${path}: ${where} is not a directory`);
    await access(where, constants.W_OK);
  } catch (err) {
    if (err instanceof EdgekitError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new EdgekitError(
      code === 'ENOENT' ? `${path}: directory ${where} does not exist` : `${path}: ${where} is not writable (${code})`,
    );
  }
  return { path, kind: 'file', exists };
}

function refuseIneligible(path: string, d: Drive, opts: { imageSize: number; force?: boolean }): Drive {
  const reasons = d.reasons.filter((r) => !(opts.force && r === NON_REMOVABLE));
  const small = tooSmallReason(d.size, opts.imageSize);
  if (small) reasons.push(small);
  if (!reasons.length) return d;
  const named = path === d.path ? path : `${path} (${d.path})`;
  const hint =
    reasons.length === 1 && reasons[0] === NON_REMOVABLE
      ? ` (a ${d.bus} disk, not a card or stick; pass --force if you mean it)`
      : '';
  throw new EdgekitError(`${named}: refusing to flash: ${reasons.join('; ')}${hint}`);
}

/** A drive's identity across polls: the same node at the same port. */
function driveKey(d: Drive): string {
  return `${d.path}\u0000${d.byPath ?? ''}`;
}

export interface DriveWatcher {
  /** Resolves once the drives present at start are recorded: only drives after that are reported. */
  ready: Promise<void>;
  stop(): void;
}

/**
 * Call `onDrive` for each drive that appears after the watch started and is eligible (with
 * `force`, a non-removable one too). Drives present at start are remembered and never reported.
 * A drive that is not eligible yet (a card reader still reading the card, an automounter that got
 * there first and is later unmounted) is reported when it becomes eligible; a drive that goes away
 * and comes back is new again. Polls `platform.list()`: Node has no udev netlink without native code.
 */
export function watchForNewDrives(
  platform: DrivePlatform,
  onDrive: (d: Drive) => void,
  opts: { intervalMs: number; force?: boolean; onError?: (err: unknown) => void },
): DriveWatcher {
  const known = new Set<string>();
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const usable = (d: Drive) => d.reasons.every((r) => opts.force && r === NON_REMOVABLE);

  const poll = async () => {
    const drives = await platform.list();
    const present = new Set(drives.map(driveKey));
    for (const k of [...known]) if (!present.has(k)) known.delete(k);
    for (const d of drives) {
      const k = driveKey(d);
      if (known.has(k) || !usable(d) || stopped) continue;
      known.add(k);
      onDrive(d);
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      poll()
        .catch((err) => opts.onError?.(err))
        .finally(schedule);
    }, opts.intervalMs);
  };
  const ready = platform.list().then((drives) => {
    for (const d of drives) known.add(driveKey(d));
    schedule();
  });
  return {
    ready,
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
    },
  };
}
