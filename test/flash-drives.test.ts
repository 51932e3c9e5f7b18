import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkTarget, linuxDrives, watchForNewDrives, type Drive, type DrivePlatform } from '../src/flash/drives.js';
import { parseMountinfo, parseSwaps } from '../src/flash/linux-mounts.js';
import { EdgekitError } from '../src/util/errors.js';
import { benchMachine, makeFakeSysfs } from './helpers/fake-sysfs.js';

const GiB = 1 << 30;

/** The one-line refusal checkTarget gives (or 'ok'). */
async function verdict(path: string, platform: DrivePlatform, opts: { imageSize?: number; force?: boolean } = {}): Promise<string> {
  try {
    await checkTarget(path, { imageSize: opts.imageSize ?? GiB, force: opts.force, platform });
    return 'ok';
  } catch (err) {
    expect(err).toBeInstanceOf(EdgekitError);
    const msg = (err as Error).message;
    expect(msg).not.toContain('\n');
    return msg;
  }
}

describe('/proc parsing', () => {
  it('reads mountinfo optional fields, escapes and super options, and swaps', () => {
    const m = parseMountinfo(
      '36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n' +
        '40 1 0:33 / / rw - overlay overlay rw,lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n',
    );
    expect(m[0]).toEqual({ devno: '98:0', mountpoint: '/mnt/with space', fstype: 'ext3', source: '/dev/root', superOptions: 'rw,errors=continue' });
    expect(m[1].superOptions).toContain('lowerdir=/l1:/l2');
    expect(parseSwaps('Filename Type Size Used Priority\n/swap\\040file file 1024 0 -2\n/dev/sda2 partition 1 0 -3\n')).toEqual([
      { filename: '/swap file', kind: 'file' },
      { filename: '/dev/sda2', kind: 'partition' },
    ]);
  });
});

describe('linuxDrives on a fake bench machine', () => {
  let root: string;
  let platform: DrivePlatform;
  let dev: string;
  let drives: Map<string, Drive>;
  let sys: string;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'edgekit-fake-sysfs-'));
    const opts = await makeFakeSysfs(root, benchMachine);
    dev = opts.dev;
    sys = opts.sysfs;
    platform = linuxDrives(opts);
    drives = new Map((await platform.list()).map((d) => [d.path.slice(dev.length + 1), d]));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  const d = (name: string) => {
    const x = drives.get(name);
    if (!x) throw new Error(`no drive ${name}`);
    return x;
  };

  it('lists whole disks only: no empty slots or loops, no dm/zram, no eMMC boot areas', () => {
    expect([...drives.keys()]).toEqual(['loop0', 'mmcblk0', 'mmcblk1', 'mmcblk2', 'mmcblk3', 'nvme0n1', 'sda', 'sdb', 'sdd', 'sde', 'sdf', 'vda']);
  });

  it('finds the NVMe holding / through LVM inside LUKS, with /boot, /boot/efi and swap', () => {
    const n = d('nvme0n1');
    expect(n).toMatchObject({ bus: 'nvme', system: true, holdsRoot: true, removable: false, eligible: false, size: 1000e9 });
    expect(n.model).toBe('Samsung SSD 980 1TB');
    expect(n.serial).toBe('S64ANS0T123456X');
    expect(n.mountpoints.sort()).toEqual(['/', '/boot', '/boot/efi', '[SWAP]']);
    expect(n.reasons[0]).toBe(
      `system disk: holds / (the running root filesystem, ${dev}/dm-1), /boot (${dev}/nvme0n1p2), /boot/efi (${dev}/nvme0n1p1), swap (${dev}/dm-2)`,
    );
    expect(n.partitions).toEqual(['nvme0n1p1', 'nvme0n1p2', 'nvme0n1p3'].map((p) => `${dev}/${p}`));
  });

  it('describes USB sticks and readers: serial from the USB device, port path, mounts, holders', () => {
    const sda = d('sda');
    expect(sda).toMatchObject({ bus: 'usb', removable: true, system: false, model: 'SanDisk Cruzer Blade', serial: '4C530001230801116080' });
    expect(sda.byPath).toBe(`${dev}/disk/by-path/pci-0000:00:14.0-usb-0:2:1.0-scsi-0:0:0:0`);
    expect(sda.reasons).toEqual([`mounted: /media/tech/CRUZER BLADE (${dev}/sda1)`]);
    expect(d('sdb')).toMatchObject({ bus: 'usb', eligible: true, reasons: [], serial: '20120501030900000', size: 32e9 });
    // A USB SSD that reports removable=0 is still something one unplugs.
    expect(d('sdd')).toMatchObject({ bus: 'usb', removable: true, eligible: true });
    expect(d('sde').reasons).toEqual([`in use: ${dev}/sde1 is held by ${dev}/dm-3`]);
  });

  it('marks a SATA disk with a swap partition as a system disk and names the swap and the btrfs mount', () => {
    const sdf = d('sdf');
    expect(sdf).toMatchObject({ bus: 'sata', system: true, holdsRoot: false, serial: 'WD-WX12D1234567', model: 'ATA WDC WD20EZAZ-00G' });
    expect(sdf.reasons).toEqual([`system disk: holds swap (${dev}/sdf2)`, `mounted: /srv/data (${dev}/sdf1)`, 'non-removable']);
  });

  it('tells SD cards from eMMC, and sees write protection', () => {
    expect(d('mmcblk0')).toMatchObject({ bus: 'sd', removable: true, eligible: true, model: 'SC32G', serial: '0x9c3f1a2b' });
    expect(d('mmcblk0').byPath).toBe(`${dev}/disk/by-path/platform-fe340000.mmc`);
    expect(d('mmcblk1')).toMatchObject({ bus: 'sd', readOnly: true, reasons: ['read-only'] });
    expect(d('mmcblk3')).toMatchObject({ bus: 'mmc', removable: false, reasons: ['non-removable'] });
    expect(d('vda')).toMatchObject({ bus: 'virtio', serial: 'data-disk', reasons: ['non-removable'] });
    expect(d('loop0')).toMatchObject({ bus: 'loop', model: '/srv/images/test.img', size: 2e9 });
  });

  it('checkTarget refuses each wrong target with one line naming it and why', async () => {
    const at = (n: string) => `${dev}/${n}`;
    expect(await verdict(at('nvme0n1'), platform, { force: true })).toBe(`${at('nvme0n1')}: refusing to flash: ${d('nvme0n1').reasons[0]}`);
    expect(await verdict(at('nvme0n1'), platform, { force: true })).toContain('the running root filesystem');
    expect(await verdict(at('sdf'), platform, { force: true })).toBe(
      `${at('sdf')}: refusing to flash: system disk: holds swap (${at('sdf2')}); mounted: /srv/data (${at('sdf1')})`,
    );
    expect(await verdict(at('sda'), platform, { force: true })).toContain(`mounted: /media/tech/CRUZER BLADE (${at('sda1')})`);
    expect(await verdict(at('sde'), platform)).toContain('is held by');
    expect(await verdict(at('mmcblk1'), platform)).toBe(`${at('mmcblk1')}: refusing to flash: read-only`);
    expect(await verdict(at('mmcblk2'), platform)).toBe(
      `${at('mmcblk2')}: refusing to flash: too small: 500.0 MB (500000000 bytes) < image 1.1 GB (1073741824 bytes)`,
    );
    expect(await verdict(at('mmcblk2'), platform, { imageSize: 400e6 })).toBe('ok');
    expect(await verdict(at('vda'), platform)).toBe(
      `${at('vda')}: refusing to flash: non-removable (a virtio disk, not a card or stick; pass --force if you mean it)`,
    );
    expect(await verdict(at('vda'), platform, { force: true })).toBe('ok');
    expect(await verdict(at('mmcblk3'), platform, { force: true })).toBe('ok');
    expect(await verdict(at('sdb'), platform)).toBe('ok');
    expect(await verdict(at('mmcblk0p1'), platform)).toBe(
      `${at('mmcblk0p1')}: is a partition (${at('mmcblk0p1')}); flash the whole disk instead: --to ${at('mmcblk0')}`,
    );
    const port = `${dev}/disk/by-path/pci-0000:00:14.0-usb-0:3:1.0-scsi-0:0:0:1`;
    const byPort = await checkTarget(port, { imageSize: GiB, platform });
    expect(byPort).toMatchObject({ path: port, kind: 'device', drive: { path: at('sdb') } });
  });

  it('checkTarget takes any regular file, or a new one in a writable directory', async () => {
    const file = join(root, 'out.img');
    writeFileSync(file, '');
    expect(await checkTarget(file, { imageSize: GiB, platform })).toEqual({ path: file, kind: 'file', exists: true });
    expect(await checkTarget(join(root, 'new.img'), { imageSize: GiB, platform })).toMatchObject({ kind: 'file', exists: false });
    expect(await verdict(join(root, 'no/such/dir/x.img'), platform)).toBe(
      `${join(root, 'no/such/dir/x.img')}: directory ${join(root, 'no/such/dir')} does not exist`,
    );
    expect(await verdict('/dev/null', platform)).toBe('/dev/null: not a regular file or a drive');
    expect(await verdict('/dev/sdzz9', platform)).toBe(`/dev/sdzz9: no such device (is it plugged in? see 'edgekit devices')`);
  });

  it('eject flushes, deletes the SCSI device and powers the USB port off unless a sibling slot shares it', async () => {
    const usbDir = (port: string, bus = 1) => join(sys, `devices/pci0000:00/0000:00:14.0/usb${bus}`, port);
    await platform.eject(`${dev}/sdd`);
    expect(readFileSync(join(sys, 'block/sdd/device/delete'), 'utf8')).toBe('1');
    expect(readFileSync(join(usbDir('1-4'), 'remove'), 'utf8')).toBe('1');
    await platform.eject(`${dev}/sdb`);
    expect(readFileSync(join(sys, 'block/sdb/device/delete'), 'utf8')).toBe('1');
    expect(readFileSync(join(usbDir('1-3'), 'remove'), 'utf8')).toBe(''); // the empty slot sdc is on it too
    await platform.eject(`${dev}/mmcblk0`); // flush only: nothing to write
    expect(existsSync(join(sys, 'block/mmcblk0/device/delete'))).toBe(false);
    await expect(platform.eject(`${dev}/sda`)).rejects.toThrow(`${dev}/sda: still mounted (/media/tech/CRUZER BLADE); unmount it before ejecting`);
    await platform.eject(join(root, 'out.img')); // a file: nothing
  });

  it('finds the root disk under an overlay root through its upper and lower layers', async () => {
    const r2 = mkdtempSync(join(tmpdir(), 'edgekit-fake-sysfs-'));
    try {
      const opts = await makeFakeSysfs(r2, {
        blocks: [
          { name: 'vda', devno: '254:0', device: 'pci0000:00/0000:00:04.0/virtio1', sectors: 20 * 2 ** 21 },
          { name: 'vdb', devno: '254:16', device: 'pci0000:00/0000:00:05.0/virtio2', sectors: 2 ** 21 },
        ],
        mounts: [
          ['254:0', '/media/root-ro', 'ext4', '/dev/vda'],
          ['0:40', '/media/root-rw', 'tmpfs', 'tmpfs'],
          ['0:41', '/', 'overlay', 'overlay', 'rw,lowerdir=/media/root-ro,upperdir=/media/root-rw/upper,workdir=/media/root-rw/work'],
        ],
      });
      const list = await linuxDrives(opts).list();
      expect(list.map((x) => [x.path.slice(opts.dev.length + 1), x.holdsRoot])).toEqual([
        ['vda', true],
        ['vdb', false],
      ]);
    } finally {
      rmSync(r2, { recursive: true, force: true });
    }
  });
});

// ---- the real machine -------------------------------------------------------------------------

const isRoot = process.getuid?.() === 0;
const sh = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8' }).trim();

interface LsblkDev {
  name: string;
  size: number;
  rm: boolean;
  ro: boolean;
  type: string;
  mountpoints: Array<string | null>;
  children?: LsblkDev[];
}

function lsblk(): LsblkDev[] {
  return JSON.parse(sh('lsblk', ['--json', '-b', '-o', 'NAME,SIZE,RM,RO,TYPE,MOUNTPOINTS'])).blockdevices;
}

/** Every mountpoint lsblk shows on a device and the devices stacked on it. */
function lsblkMounts(d: LsblkDev): string[] {
  return [...d.mountpoints.filter((m): m is string => !!m), ...(d.children ?? []).flatMap(lsblkMounts)];
}

describe('linuxDrives on this machine', () => {
  const platform = linuxDrives();

  it('agrees with lsblk on every disk, and marks the disk holding / as the system disk', async () => {
    // Others may attach loop devices meanwhile: compare the disks lsblk shows the same before and after.
    const wanted = (l: LsblkDev) => (l.type === 'disk' || l.type === 'loop') && l.size > 0 && !/^(zram|ram|md|dm-)/.test(l.name);
    const key = (l: LsblkDev) => JSON.stringify([l.name, l.size, l.ro, lsblkMounts(l).sort()]);
    const before = lsblk().filter(wanted);
    const drives = new Map((await platform.list()).map((d) => [d.path, d]));
    const after = new Set(lsblk().filter(wanted).map(key));
    const disks = before.filter((l) => after.has(key(l)));
    for (const l of disks) {
      const d = drives.get(`/dev/${l.name}`);
      expect(d, l.name).toBeDefined();
      expect(d!.size, l.name).toBe(l.size);
      expect(d!.readOnly, l.name).toBe(l.ro);
      if (l.rm) expect(d!.removable, l.name).toBe(true);
      expect([...d!.mountpoints].sort(), l.name).toEqual([...new Set(lsblkMounts(l))].sort());
      expect(d!.holdsRoot, l.name).toBe(lsblkMounts(l).includes('/'));
      if (lsblkMounts(l).length) expect(d!.eligible, l.name).toBe(false);
    }
    // ... and nothing listed that lsblk does not show (or that came and went meanwhile).
    const shown = new Set([...before, ...lsblk().filter(wanted)].map((l) => `/dev/${l.name}`));
    for (const path of drives.keys()) expect(shown.has(path), path).toBe(true);
    expect(drives.size).toBeGreaterThan(0);
    const rootDisk = disks.find((l) => lsblkMounts(l).includes('/'));
    if (!rootDisk) return; // an overlay root from a disk this namespace cannot see: nothing to protect here
    const msg = await verdict(`/dev/${rootDisk.name}`, platform, { imageSize: 1, force: true });
    expect(msg).toContain(`/dev/${rootDisk.name}: refusing to flash: system disk: holds / (the running root filesystem`);
  });

  it('refuses a block device that is not a drive', async () => {
    const zram = lsblk().find((d) => d.name.startsWith('zram'));
    if (!zram) return;
    expect(await verdict(`/dev/${zram.name}`, platform)).toContain('not a drive edgekit can flash');
  });
});

describe.runIf(isRoot)('loop devices on this machine (root)', () => {
  // A fresh platform per look: nothing is cached between list() calls anyway.
  const real = () => linuxDrives();
  let work: string;
  const loops: string[] = [];
  const mounted: string[] = [];
  const swapped: string[] = [];

  const attach = (file: string, ...flags: string[]) => {
    const loop = sh('losetup', ['-f', '--show', ...flags, file]);
    loops.push(loop);
    return loop;
  };
  const image = (name: string, bytes: number, table = false) => {
    const file = join(work, name);
    writeFileSync(file, '');
    execFileSync('truncate', ['-s', String(bytes), file]);
    if (table) execFileSync('sfdisk', ['-q', file], { input: 'label: gpt\n,16M\n,\n' });
    return file;
  };

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'edgekit-drives-'));
  });
  afterAll(() => {
    for (const m of mounted) execFileSync('umount', [m]);
    for (const s of swapped) execFileSync('swapoff', [s]);
    for (const l of loops.reverse()) execFileSync('losetup', ['-d', l]);
    rmSync(work, { recursive: true, force: true });
  });

  it('sees a partitioned loop device, refuses its partition, and names a mounted one', async () => {
    const file = image('parted.img', 48 << 20, true);
    const loop = attach(file, '-P');
    if (!existsSync(`${loop}p1`)) execFileSync('partx', ['-a', loop]);
    let d = (await real().list()).find((x) => x.path === loop)!;
    expect(d).toMatchObject({ bus: 'loop', size: 48 << 20, model: file, readOnly: false, removable: false, system: false });
    expect(d.partitions).toEqual([`${loop}p1`, `${loop}p2`]);
    expect(await verdict(loop, real(), { imageSize: 1 << 20 })).toContain('non-removable');
    expect(await verdict(loop, real(), { imageSize: 1 << 20, force: true })).toBe('ok');
    expect(await verdict(loop, real(), { imageSize: 64 << 20, force: true })).toContain('too small: 50.3 MB (50331648 bytes)');
    expect(await verdict(`${loop}p1`, real(), { imageSize: 1 })).toBe(`${loop}p1: is a partition (${loop}p1); flash the whole disk instead: --to ${loop}`);

    execFileSync('mkfs.ext4', ['-q', `${loop}p1`]);
    const mnt = join(work, 'mnt point');
    execFileSync('mkdir', [mnt]);
    execFileSync('mount', [`${loop}p1`, mnt]);
    mounted.push(mnt);
    d = (await real().list()).find((x) => x.path === loop)!;
    expect(d.mountpoints).toEqual([mnt]);
    const l = lsblk().find((x) => `/dev/${x.name}` === loop)!;
    expect(d.mountpoints).toEqual(lsblkMounts(l));
    expect(await verdict(loop, real(), { imageSize: 1, force: true })).toBe(`${loop}: refusing to flash: mounted: ${mnt} (${loop}p1)`);
    await expect(real().eject(loop)).rejects.toThrow('still mounted');
  });

  it('refuses a read-only loop device, and calls a disk with active swap a system disk', async () => {
    const ro = attach(image('ro.img', 8 << 20), '-r');
    expect((await real().list()).find((x) => x.path === ro)).toMatchObject({ readOnly: true, reasons: ['read-only', 'non-removable'] });
    expect(await verdict(ro, real(), { imageSize: 1, force: true })).toBe(`${ro}: refusing to flash: read-only`);

    const sw = attach(image('swap.img', 8 << 20));
    execFileSync('mkswap', ['-q', sw]);
    execFileSync('swapon', [sw]);
    swapped.push(sw);
    expect(await verdict(sw, real(), { imageSize: 1, force: true })).toBe(`${sw}: refusing to flash: system disk: holds swap (${sw})`);
    await real().eject(ro); // flush only for a loop device
  });

  it('watchForNewDrives reports a loop device attached after it started, not one present before', async () => {
    const before = attach(image('before.img', 8 << 20));
    const seen: Drive[] = [];
    let wake = () => {};
    const w = watchForNewDrives(
      real(),
      (d) => {
        seen.push(d);
        wake();
      },
      { intervalMs: 50, force: true },
    );
    try {
      await w.ready;
      const after = attach(image('after.img', 8 << 20));
      // Others' loop devices may show up too: wait for ours (the test's timeout bounds the wait).
      while (!seen.some((d) => d.path === after)) await new Promise<void>((r) => (wake = r));
      expect(seen.find((d) => d.path === after)).toMatchObject({ bus: 'loop', model: join(work, 'after.img') });
      expect(seen.map((d) => d.path)).not.toContain(before);
    } finally {
      w.stop();
    }
  });

  it('edgekit devices --json lists this machine', () => {
    const out = JSON.parse(sh('node', ['bin/edgekit.js', 'devices', '--json', '--all']));
    const byPath = new Map<string, Drive>(out.drives.map((d: Drive) => [d.path, d]));
    for (const l of lsblk().filter((x) => x.type === 'disk' && x.size > 0 && !/^(zram|ram)/.test(x.name))) {
      expect(byPath.get(`/dev/${l.name}`)?.size).toBe(l.size);
    }
    for (const loop of loops) expect(byPath.get(loop)?.bus).toBe('loop');
    // Without --all the system disks (the root disk, the loop with active swap) are left out; with
    // --image the smaller drives say so.
    const withImage = JSON.parse(sh('node', ['bin/edgekit.js', 'devices', '--json', '--image', join(work, 'parted.img')]));
    expect(withImage.image.size).toBe(48 << 20);
    expect(withImage.drives.some((d: Drive) => d.system)).toBe(false);
    const ro = withImage.drives.find((d: Drive) => d.readOnly && d.bus === 'loop');
    expect(ro.reasons).toContain('too small: 8.4 MB (8388608 bytes) < image 50.3 MB (50331648 bytes)');
    expect(ro.eligible).toBe(false);
  });
});

