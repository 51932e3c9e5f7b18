/**
 * A fake /sys, /dev and /proc laid out like the kernel's (block dirs under their device's sysfs
 * path, /sys/block, /sys/class/block and /sys/dev/block links, holders/slaves, by-path links), so
 * linuxDrives() can be tested on machines we do not have: a laptop with LUKS+LVM on NVMe, USB
 * sticks and card readers, SD cards, eMMC, SATA, virtio and loop devices.
 */
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { LinuxDriveOptions } from '../../src/flash/drives-linux.js';

export interface FakePartition {
  name: string;
  devno: string;
  sectors: number;
  holders?: string[];
}

export interface FakeBlock {
  name: string;
  devno: string;
  /** The parent device under /sys/devices ('virtual' for loop, dm, zram). */
  device: string;
  sectors: number;
  removable?: boolean;
  ro?: boolean;
  /** Files in the block device's own directory ('serial', 'loop/backing_file'). */
  attrs?: Record<string, string>;
  /** Files in its parent device's directory ('model', 'vendor', 'type', 'vpd_pg80'). */
  deviceAttrs?: Record<string, string | Buffer>;
  partitions?: FakePartition[];
  holders?: string[];
  slaves?: string[];
}

export interface FakeMachine {
  blocks: FakeBlock[];
  /** USB device directories (under /sys/devices) with their attribute files. */
  usbDevices?: Record<string, Record<string, string>>;
  /** Extra /dev symlinks: 'mapper/vg-root' -> '../dm-1', 'disk/by-path/...' -> '../../sdb'. */
  devLinks?: Record<string, string>;
  /** mountinfo rows: [devno, mountpoint, fstype, source, superOptions?]. */
  mounts: Array<[string, string, string, string, string?]>;
  /** /proc/swaps rows: [filename, 'partition' | 'file']. */
  swaps?: Array<[string, 'partition' | 'file']>;
}

async function put(path: string, content: string | Buffer): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, content);
}

async function link(target: string, path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await symlink(target, path);
}

/**
 * A stand-in for a device node. Not a regular file (checkTarget takes any regular file as an image
 * target), and a directory can still be opened and fsynced the way eject() flushes a drive.
 */
async function node(path: string): Promise<void> {
  await mkdir(path, { recursive: true });
}

/** Build the fake machine under `root`; returns the options that point linuxDrives() at it. */
export async function makeFakeSysfs(root: string, m: FakeMachine): Promise<Required<LinuxDriveOptions>> {
  const sys = join(root, 'sys');
  const dev = join(root, 'dev');
  const blockDir = (b: FakeBlock) => join(sys, 'devices', b.device, 'block', b.name);
  const dirOf = new Map<string, string>();
  for (const b of m.blocks) {
    dirOf.set(b.name, blockDir(b));
    for (const p of b.partitions ?? []) dirOf.set(p.name, join(blockDir(b), p.name));
  }
  const refs = async (dir: string, kind: 'holders' | 'slaves', names: string[] = []) => {
    await mkdir(join(dir, kind), { recursive: true });
    for (const n of names) await link(dirOf.get(n) ?? join(sys, 'devices/virtual/block', n), join(dir, kind, n));
  };

  for (const [path, attrs] of Object.entries(m.usbDevices ?? {})) {
    for (const [k, v] of Object.entries(attrs)) await put(join(sys, 'devices', path, k), v);
  }
  for (const b of m.blocks) {
    const dir = blockDir(b);
    await put(join(dir, 'dev'), `${b.devno}\n`);
    await put(join(dir, 'size'), `${b.sectors}\n`);
    await put(join(dir, 'removable'), b.removable ? '1\n' : '0\n');
    await put(join(dir, 'ro'), b.ro ? '1\n' : '0\n');
    for (const [k, v] of Object.entries(b.attrs ?? {})) await put(join(dir, k), `${v}\n`);
    await refs(dir, 'holders', b.holders);
    await refs(dir, 'slaves', b.slaves);
    if (b.device !== 'virtual') {
      await link('../..', join(dir, 'device'));
      for (const [k, v] of Object.entries(b.deviceAttrs ?? {})) {
        await put(join(sys, 'devices', b.device, k), typeof v === 'string' ? `${v}\n` : v);
      }
    }
    await link(dir, join(sys, 'block', b.name));
    await link(dir, join(sys, 'class/block', b.name));
    await link(dir, join(sys, 'dev/block', b.devno));
    await node(join(dev, b.name));
    for (const p of b.partitions ?? []) {
      const pdir = join(dir, p.name);
      await put(join(pdir, 'partition'), `${/(\d+)$/.exec(p.name)?.[1]}\n`);
      await put(join(pdir, 'dev'), `${p.devno}\n`);
      await put(join(pdir, 'size'), `${p.sectors}\n`);
      await refs(pdir, 'holders', p.holders);
      await link(pdir, join(sys, 'class/block', p.name));
      await link(pdir, join(sys, 'dev/block', p.devno));
      await node(join(dev, p.name));
    }
  }
  for (const [path, target] of Object.entries(m.devLinks ?? {})) await link(target, join(dev, path));

  const mountinfo = m.mounts
    .map(([no, mp, fs, src, opts], i) => `${20 + i} 1 ${no} / ${mp.replace(/ /g, '\\040')} rw,relatime - ${fs} ${src} ${opts ?? 'rw'}`)
    .join('\n');
  await put(join(root, 'proc/mountinfo'), mountinfo + '\n');
  const swaps = (m.swaps ?? []).map(([f, kind]) => `${f.padEnd(40)}${kind}\t\t1048572\t\t0\t\t-2`);
  await put(join(root, 'proc/swaps'), ['Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority', ...swaps].join('\n') + '\n');
  return { sysfs: sys, dev, procMountinfo: join(root, 'proc/mountinfo'), procSwaps: join(root, 'proc/swaps') };
}

const GB = 1_000_000_000 / 512; // sectors
const usb = (port: string, bus = 1) =>
  `pci0000:00/0000:00:14.0/usb${bus}/${port}/${port}:1.0/host${port.replace(/\D/g, '')}/target0:0:0/0:0:0:0`;
const mmc = (host: number, card: string) => `platform/fe340000.mmc/mmc_host/mmc${host}/mmc${host}:${card}`;

/** The SCSI serial-number VPD page (0x80) as the kernel exposes it: header, then ASCII. */
function vpd80(serial: string): Buffer {
  return Buffer.concat([Buffer.from([0, 0x80, 0, serial.length]), Buffer.from(serial, 'latin1')]);
}

/**
 * A technician's bench PC: / on LVM inside LUKS on an NVMe (with /boot, /boot/efi and swap on it
 * too), a SATA data disk with a swap partition, USB sticks (one mounted, one clean, one under an
 * open LUKS mapping), a two-slot USB card reader (one slot empty), SD cards in MMC slots (clean,
 * write-protected, too small), an eMMC, a virtio disk and loop devices.
 */
export const benchMachine: FakeMachine = {
  usbDevices: {
    'pci0000:00/0000:00:14.0/usb1/1-2': { idVendor: '0781\n', serial: '4C530001230801116080\n', remove: '', authorized: '1\n' },
    'pci0000:00/0000:00:14.0/usb1/1-3': { idVendor: '0bda\n', serial: '20120501030900000\n', remove: '', authorized: '1\n' },
    'pci0000:00/0000:00:14.0/usb1/1-4': { idVendor: '090c\n', serial: 'AA00000000000489\n', remove: '', authorized: '1\n' },
    'pci0000:00/0000:00:14.0/usb2/2-1': { idVendor: '152d\n', serial: 'DD564198838E0\n', remove: '', authorized: '1\n' },
  },
  blocks: [
    {
      name: 'nvme0n1',
      devno: '259:0',
      device: 'pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0',
      sectors: 1000 * GB,
      deviceAttrs: { model: 'Samsung SSD 980 1TB', serial: 'S64ANS0T123456X' },
      partitions: [
        { name: 'nvme0n1p1', devno: '259:1', sectors: 1048576 },
        { name: 'nvme0n1p2', devno: '259:2', sectors: 2097152 },
        { name: 'nvme0n1p3', devno: '259:3', sectors: 990 * GB, holders: ['dm-0'] },
      ],
    },
    { name: 'dm-0', devno: '253:0', device: 'virtual', sectors: 990 * GB, slaves: ['nvme0n1p3'], holders: ['dm-1', 'dm-2'] },
    { name: 'dm-1', devno: '253:1', device: 'virtual', sectors: 980 * GB, slaves: ['dm-0'] },
    { name: 'dm-2', devno: '253:2', device: 'virtual', sectors: 10 * GB, slaves: ['dm-0'] },
    {
      name: 'sda',
      devno: '8:0',
      device: usb('1-2'),
      sectors: 16 * GB,
      removable: true,
      deviceAttrs: { vendor: 'SanDisk ', model: 'Cruzer Blade    ' },
      partitions: [{ name: 'sda1', devno: '8:1', sectors: 16 * GB - 2048 }],
    },
    {
      name: 'sdb',
      devno: '8:16',
      device: usb('1-3').replace('0:0:0:0', '0:0:0:1'),
      sectors: 32 * GB,
      removable: true,
      deviceAttrs: { vendor: 'Generic-', model: 'SD/MMC/MS PRO' },
    },
    // The reader's second slot, with no card in it.
    { name: 'sdc', devno: '8:32', device: usb('1-3').replace('0:0:0:0', '0:0:0:2'), sectors: 0, removable: true },
    // A USB SSD that (like many) says it is not removable.
    { name: 'sdd', devno: '8:48', device: usb('1-4'), sectors: 64 * GB, deviceAttrs: { vendor: 'USB', model: 'Flash Disk' } },
    {
      name: 'sde',
      devno: '8:64',
      device: usb('2-1', 2),
      sectors: 500 * GB,
      partitions: [{ name: 'sde1', devno: '8:65', sectors: 500 * GB - 2048, holders: ['dm-3'] }],
    },
    { name: 'dm-3', devno: '253:3', device: 'virtual', sectors: 500 * GB - 4096, slaves: ['sde1'] },
    {
      name: 'sdf',
      devno: '8:80',
      device: 'pci0000:00/0000:00:17.0/ata3/host2/target2:0:0/2:0:0:0',
      sectors: 2000 * GB,
      deviceAttrs: { vendor: 'ATA     ', model: 'WDC WD20EZAZ-00G', vpd_pg80: vpd80('WD-WX12D1234567') },
      partitions: [
        { name: 'sdf1', devno: '8:81', sectors: 1990 * GB },
        { name: 'sdf2', devno: '8:82', sectors: 10 * GB },
      ],
    },
    {
      name: 'mmcblk0',
      devno: '179:0',
      device: mmc(0, 'aaaa'),
      sectors: 32 * GB,
      deviceAttrs: { type: 'SD', name: 'SC32G', serial: '0x9c3f1a2b' },
      partitions: [{ name: 'mmcblk0p1', devno: '179:1', sectors: 32 * GB - 8192 }],
    },
    { name: 'mmcblk1', devno: '179:8', device: mmc(1, 'aaaa'), sectors: 16 * GB, ro: true, deviceAttrs: { type: 'SD', name: 'SL16G' } },
    { name: 'mmcblk2', devno: '179:16', device: mmc(2, 'aaaa'), sectors: 0.5 * GB, deviceAttrs: { type: 'SD', name: 'SD512' } },
    { name: 'mmcblk3', devno: '179:24', device: mmc(3, '0001'), sectors: 8 * GB, deviceAttrs: { type: 'MMC', name: 'DG4008' } },
    { name: 'mmcblk3boot0', devno: '179:32', device: mmc(3, '0001'), sectors: 8192, ro: true },
    { name: 'mmcblk3boot1', devno: '179:40', device: mmc(3, '0001'), sectors: 8192, ro: true },
    { name: 'vda', devno: '254:0', device: 'pci0000:00/0000:00:04.0/virtio2', sectors: 8 * GB, attrs: { serial: 'data-disk' } },
    { name: 'loop0', devno: '7:0', device: 'virtual', sectors: 2 * GB, attrs: { 'loop/backing_file': '/srv/images/test.img' } },
    { name: 'loop1', devno: '7:1', device: 'virtual', sectors: 0 },
    { name: 'zram0', devno: '252:0', device: 'virtual', sectors: 8 * GB },
  ],
  devLinks: {
    'mapper/luks-root': '../dm-0',
    'mapper/vg-root': '../dm-1',
    'mapper/vg-swap': '../dm-2',
    'mapper/luks-backup': '../dm-3',
    'disk/by-path/pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0': '../../sda',
    'disk/by-path/pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0-part1': '../../sda1',
    'disk/by-path/pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:1': '../../sdb',
    'disk/by-path/pci-0000:00:14.0-usb-0:4:1.0-scsi-0:0:0:0': '../../sdd',
    'disk/by-path/platform-fe340000.mmc': '../../mmcblk0',
  },
  mounts: [
    ['0:21', '/proc', 'proc', 'proc'],
    ['0:22', '/sys', 'sysfs', 'sysfs'],
    ['253:1', '/', 'ext4', '/dev/mapper/vg-root'],
    ['259:2', '/boot', 'ext4', '/dev/nvme0n1p2'],
    ['259:1', '/boot/efi', 'vfat', '/dev/nvme0n1p1'],
    ['0:45', '/run/user/1000', 'tmpfs', 'tmpfs'],
    ['8:1', '/media/tech/CRUZER BLADE', 'vfat', '/dev/sda1'],
    // btrfs reports an anonymous device number: only the source names the partition.
    ['0:52', '/srv/data', 'btrfs', '/dev/sdf1', 'rw,space_cache=v2,subvolid=5,subvol=/'],
  ],
  swaps: [
    ['/dev/dm-2', 'partition'],
    ['/dev/sdf2', 'partition'],
  ],
};
