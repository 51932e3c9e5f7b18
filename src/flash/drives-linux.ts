/**
 * Drives on Linux, read straight from the kernel: /sys/block for the disks and their facts,
 * /dev/disk/by-path for stable port names (when udev runs), /proc/self/mountinfo and /proc/swaps
 * for what is in use. Each mount and swap is traced down to the disks under it (partition -> disk,
 * device-mapper/md -> slaves, loop -> the disk holding its backing file, overlay -> its layers), so
 * a disk under LUKS or LVM holding / is still the system disk. Every path is configurable so tests
 * can point it at a fake tree.
 */
import { open, readdir, readFile, readlink, realpath, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { EdgekitError } from '../util/errors.js';
import type { Drive, DriveBus, DriveMount, DrivePlatform } from './drives.js';
import { mountContaining, overlayLayers, readMountinfo, readSwaps, type MountEntry } from './linux-mounts.js';

export interface LinuxDriveOptions {
  /** Where sysfs is mounted: /sys. */
  sysfs?: string;
  /** Where device nodes are: /dev (drive paths are built under it). */
  dev?: string;
  /** The mount table in mountinfo format: /proc/self/mountinfo. */
  procMountinfo?: string;
  /** /proc/swaps. */
  procSwaps?: string;
}

/** Mountpoints that make a disk the system disk: the running system would break without them. */
const SYSTEM_MOUNTPOINTS = new Set(['/', '/boot', '/boot/efi', '/boot/firmware', '/efi', '/usr', '/var']);
const SWAP = '[SWAP]';

/**
 * Whole disks that are never flashing targets: device-mapper and md sit on top of real disks (which
 * are listed), zram/ram are memory, sr is optical, mtdblock raw flash, and an eMMC's boot and rpmb
 * areas are hardware partitions of a chip that is listed as itself.
 */
const NOT_A_DRIVE = /^(dm-|md|zram|ram|sr|fd|mtdblock)|^mmcblk\d+(boot\d+|rpmb)$/;

/** How deep to follow device stacks (dm on loop on a file on dm on ...) before giving up. */
const MAX_DEPTH = 8;

async function readAttr(path: string): Promise<string | undefined> {
  try {
    const v = (await readFile(path, 'utf8')).replace(/\0/g, '').trim();
    return v || undefined;
  } catch {
    return undefined;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function listDir(path: string): Promise<string[]> {
  return readdir(path).then(
    (names) => names.sort(),
    () => [],
  );
}

/** major/minor of a dev_t as glibc's gnu_dev_major/minor split it. */
function devno(rdev: number): string {
  const major = Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
  const minor = Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** The bus a disk hangs off, from the directories of its sysfs device path. */
function busFromPath(sysPath: string, mmcType: string | undefined): DriveBus {
  const parts = sysPath.split('/');
  if (parts.includes('virtual') && /^loop\d+$/.test(basename(sysPath))) return 'loop';
  if (parts.includes('mmc_host') || /^mmcblk/.test(basename(sysPath))) {
    return mmcType === 'SD' ? 'sd' : mmcType === 'MMC' ? 'mmc' : 'other';
  }
  if (parts.some((p) => /^usb\d+$/.test(p))) return 'usb';
  if (parts.includes('nvme') || /^nvme/.test(basename(sysPath))) return 'nvme';
  if (parts.some((p) => /^virtio\d+$/.test(p))) return 'virtio';
  if (parts.some((p) => /^ata\d+$/.test(p))) return 'sata';
  return 'other';
}

/** The SCSI unit serial number page (VPD 0x80): 4 header bytes, then the ASCII serial. */
function vpdSerial(page: Buffer): string | undefined {
  if (page.length < 4 || page[1] !== 0x80) return undefined;
  const s = page.subarray(4, 4 + page[3]).toString('latin1').trim();
  return s || undefined;
}

/** Turns /proc and /sys facts into "which disks does this device sit on". */
class DeviceTracer {
  constructor(
    private readonly sysfs: string,
    private readonly dev: string,
    private readonly mounts: MountEntry[],
  ) {}

  /** The kernel name of the block device a /dev path names (following /dev/mapper links and the like). */
  async nameOfNode(node: string): Promise<string | undefined> {
    const local = node.startsWith('/dev/') ? join(this.dev, node.slice(5)) : node;
    const st = await stat(local).catch(() => undefined);
    if (st?.isBlockDevice()) {
      const byNo = await this.nameOfDevno(devno(st.rdev));
      if (byNo) return byNo;
    }
    const name = basename(await realpath(local).catch(() => local));
    return (await exists(join(this.sysfs, 'class/block', name))) ? name : undefined;
  }

  async nameOfDevno(no: string): Promise<string | undefined> {
    if (no.startsWith('0:')) return undefined; // anonymous: btrfs, overlay, tmpfs, proc...
    const p = await realpath(join(this.sysfs, 'dev/block', no)).catch(() => undefined);
    return p ? basename(p) : undefined;
  }

  /** Block devices a mount's filesystem lives on. */
  async devicesOfMount(m: MountEntry, depth = 0): Promise<string[]> {
    if (depth > MAX_DEPTH) return [];
    const byNo = await this.nameOfDevno(m.devno);
    if (byNo) return [byNo];
    if (m.source.startsWith('/dev/')) {
      const byNode = await this.nameOfNode(m.source);
      if (byNode) return [byNode];
    }
    if (m.fstype === 'overlay') {
      const out: string[] = [];
      for (const layer of overlayLayers(m)) {
        const under = mountContaining(
          this.mounts.filter((x) => x !== m),
          layer,
        );
        if (under) out.push(...(await this.devicesOfMount(under, depth + 1)));
      }
      return out;
    }
    return [];
  }

  /** Block devices holding a file (a swap file, a loop device's backing file). */
  async devicesOfFile(path: string, depth: number): Promise<string[]> {
    const m = mountContaining(this.mounts, path);
    return m ? this.devicesOfMount(m, depth + 1) : [];
  }

  /** Whole disks (names in /sys/block) under a block device, the device itself included if it is one. */
  async disksUnder(name: string, depth = 0): Promise<string[]> {
    if (depth > MAX_DEPTH) return [];
    const sys = await realpath(join(this.sysfs, 'class/block', name)).catch(() => undefined);
    if (!sys) return [];
    if (await exists(join(sys, 'partition'))) return this.disksUnder(basename(dirname(sys)), depth + 1);
    const out = (await exists(join(this.sysfs, 'block', name))) ? [name] : [];
    for (const slave of await listDir(join(sys, 'slaves'))) out.push(...(await this.disksUnder(slave, depth + 1)));
    const backing = await readAttr(join(sys, 'loop/backing_file'));
    if (backing) {
      for (const d of await this.devicesOfFile(backing.replace(/ \(deleted\)$/, ''), depth)) {
        out.push(...(await this.disksUnder(d, depth + 1)));
      }
    }
    return [...new Set(out)];
  }
}

interface Attributed {
  mounts: DriveMount[];
  holdsRoot: boolean;
}

export function linuxDrives(opts: LinuxDriveOptions = {}): DrivePlatform {
  const sysfs = opts.sysfs ?? '/sys';
  const dev = opts.dev ?? '/dev';
  const procMountinfo = opts.procMountinfo ?? '/proc/self/mountinfo';
  const procSwaps = opts.procSwaps ?? '/proc/swaps';
  const devPath = (name: string) => join(dev, name);

  /** Each disk's mounts and swaps, traced down through partitions and stacked devices. */
  async function attributeMounts(tracer: DeviceTracer, mounts: MountEntry[]): Promise<Map<string, Attributed>> {
    const byDisk = new Map<string, Attributed>();
    const add = async (deviceNames: string[], mountpoint: string, isRoot: boolean) => {
      for (const name of deviceNames) {
        for (const disk of await tracer.disksUnder(name)) {
          const a = byDisk.get(disk) ?? { mounts: [], holdsRoot: false };
          const device = devPath(name);
          if (!a.mounts.some((x) => x.device === device && x.mountpoint === mountpoint)) a.mounts.push({ device, mountpoint });
          a.holdsRoot ||= isRoot;
          byDisk.set(disk, a);
        }
      }
    };
    // The root is the last mount on "/" (a later mount there hides the earlier ones).
    const root = mounts.filter((m) => m.mountpoint === '/').at(-1);
    for (const m of mounts) await add(await tracer.devicesOfMount(m), m.mountpoint, m === root);
    for (const s of await readSwaps(procSwaps)) {
      const names =
        s.kind === 'file' ? await tracer.devicesOfFile(s.filename, 0) : [await tracer.nameOfNode(s.filename)].filter((n): n is string => !!n);
      await add(names, SWAP, false);
    }
    return byDisk;
  }

  /** Stable port links (/dev/disk/by-path/...) by disk name; the first in sorted order wins. */
  async function portPaths(): Promise<Map<string, string>> {
    const dir = join(dev, 'disk/by-path');
    const out = new Map<string, string>();
    for (const link of await listDir(dir)) {
      const target = await readlink(join(dir, link)).catch(() => undefined);
      if (target && !out.has(basename(target))) out.set(basename(target), join(dir, link));
    }
    return out;
  }

  /** The USB device directory (the one with idVendor) a disk hangs off, if any. */
  async function usbDeviceOf(sysPath: string): Promise<string | undefined> {
    for (let p = dirname(sysPath); p.length > 1 && p !== dirname(p); p = dirname(p)) {
      if (basename(p) === 'devices') return undefined;
      if (await exists(join(p, 'idVendor'))) return p;
    }
    return undefined;
  }

  async function describe(name: string, attributed: Attributed | undefined, ports: Map<string, string>): Promise<Drive | undefined> {
    const block = join(sysfs, 'block', name);
    const sectors = Number(await readAttr(join(block, 'size')));
    if (!sectors) return undefined; // an empty card reader, an unattached loop device
    const sysPath = await realpath(block);
    const attr = (p: string) => readAttr(join(block, p));
    const bus = busFromPath(sysPath, await attr('device/type'));
    const usbDev = bus === 'usb' ? await usbDeviceOf(sysPath) : undefined;

    const vendor = bus === 'usb' || bus === 'sata' || bus === 'other' ? await attr('device/vendor') : undefined;
    const model =
      bus === 'loop'
        ? await attr('loop/backing_file')
        : [vendor, (await attr('device/model')) ?? (await attr('device/name'))].filter(Boolean).join(' ') || undefined;
    const serial =
      (await attr('serial')) ??
      (await attr('device/serial')) ??
      (usbDev ? await readAttr(join(usbDev, 'serial')) : undefined) ??
      vpdSerial(await readFile(join(block, 'device/vpd_pg80')).catch(() => Buffer.alloc(0)));

    const partitionNames: string[] = [];
    for (const entry of await listDir(block)) {
      if (await exists(join(block, entry, 'partition'))) partitionNames.push(entry);
    }
    const mounts = attributed?.mounts ?? [];
    const holdsRoot = attributed?.holdsRoot ?? false;
    const systemMounts = mounts.filter((m) => SYSTEM_MOUNTPOINTS.has(m.mountpoint) || m.mountpoint === SWAP);
    const otherMounts = mounts.filter((m) => !systemMounts.includes(m));
    const removable = (await attr('removable')) === '1' || bus === 'usb' || bus === 'sd';
    const readOnly = (await attr('ro')) === '1';

    const reasons: string[] = [];
    const say = (m: DriveMount) =>
      m.mountpoint === SWAP
        ? `swap (${m.device})`
        : m.mountpoint === '/' && holdsRoot
          ? `/ (the running root filesystem, ${m.device})`
          : `${m.mountpoint} (${m.device})`;
    if (systemMounts.length) reasons.push(`system disk: holds ${systemMounts.map(say).join(', ')}`);
    if (otherMounts.length) reasons.push(`mounted: ${otherMounts.map(say).join(', ')}`);
    if (!mounts.length) {
      // Nothing mounted, but an open LUKS/LVM/md device on it still reads and writes it.
      const held: string[] = [];
      for (const part of [name, ...partitionNames]) {
        const holders = await listDir(join(block, part === name ? '' : part, 'holders'));
        if (holders.length) held.push(`${devPath(part)} is held by ${holders.map(devPath).join(', ')}`);
      }
      if (held.length) reasons.push(`in use: ${held.join(', ')}`);
    }
    if (readOnly) reasons.push('read-only');
    if (!removable) reasons.push('non-removable');

    return {
      path: devPath(name),
      byPath: ports.get(name),
      size: sectors * 512, // sysfs counts 512-byte sectors whatever the logical block size
      model,
      serial,
      bus,
      removable,
      readOnly,
      mountpoints: [...new Set(mounts.map((m) => m.mountpoint))],
      mounts,
      partitions: partitionNames.map(devPath),
      system: systemMounts.length > 0,
      holdsRoot,
      reasons,
      eligible: reasons.length === 0,
    };
  }

  async function list(): Promise<Drive[]> {
    const mounts = await readMountinfo(procMountinfo);
    const tracer = new DeviceTracer(sysfs, dev, mounts);
    const attributed = await attributeMounts(tracer, mounts);
    const ports = await portPaths();
    const drives: Drive[] = [];
    for (const name of await listDir(join(sysfs, 'block'))) {
      if (NOT_A_DRIVE.test(name)) continue;
      const d = await describe(name, attributed.get(name), ports);
      if (d) drives.push(d);
    }
    return drives;
  }

  /**
   * What udisks does for "power off", without udisks: fsync the device node (the kernel writes back
   * its cached blocks and flushes the drive's write cache), then for a USB drive delete the SCSI
   * device (the sd driver syncs the cache and stops the unit) and, if no other disk shares the USB
   * device (a multi-slot card reader), remove the USB device so its port is powered down and the
   * stick's light goes out. SD slots and other buses cannot be powered off from userspace: flush only.
   */
  async function eject(path: string): Promise<void> {
    const st = await stat(path).catch(() => undefined);
    const real = await realpath(path).catch(() => path);
    let drive: Drive | undefined;
    for (const d of await list()) if ((await realpath(d.path).catch(() => d.path)) === real) drive = d;
    if (!drive) {
      if (!st || st.isFile()) return; // an image file (or one never written): nothing to power off
      throw new EdgekitError(`${path}: not a drive edgekit knows; nothing ejected`);
    }
    if (drive.mounts.length) {
      throw new EdgekitError(`${path}: still mounted (${drive.mountpoints.join(', ')}); unmount it before ejecting`);
    }
    const fh = await open(path, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    if (drive.bus !== 'usb') return;
    const name = basename(drive.path);
    const sysPath = await realpath(join(sysfs, 'block', name));
    const usbDev = await usbDeviceOf(sysPath);
    const poke = async (file: string, value: string) => {
      try {
        await writeFile(file, value);
      } catch (err) {
        throw new EdgekitError(`${path}: flushed, but could not power it off (${file}: ${(err as NodeJS.ErrnoException).code})`);
      }
    };
    await poke(join(sysfs, 'block', name, 'device/delete'), '1');
    if (!usbDev) return;
    for (const other of await listDir(join(sysfs, 'block'))) {
      if (other === name) continue;
      const p = await realpath(join(sysfs, 'block', other)).catch(() => '');
      if (p.startsWith(usbDev + '/')) return; // another slot of the same reader: leave the port on
    }
    if (await exists(join(usbDev, 'remove'))) await poke(join(usbDev, 'remove'), '1');
    else if (await exists(join(usbDev, 'authorized'))) await poke(join(usbDev, 'authorized'), '0');
  }

  return { list, eject };
}
