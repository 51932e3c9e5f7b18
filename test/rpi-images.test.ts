/**
 * Raspberry Pi images built by edgekit, checked against a table of what the Pi firmware expects
 * (test/rpi-boot-table.ts, written from the Raspberry Pi boot documentation, not from boards/),
 * then booted under QEMU's raspi3b: the kernel, DTB and initramfs taken out of the image's FAT,
 * and once through U-Boot from the SD image to show the boot counter falling back.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { builtImage, testDir } from './helpers/built-images.js';
import { sh } from './helpers/image-bytes.js';
import { checkRpiBootPartition, checkRpiPartitionTable, type RpiModel } from './rpi-boot-table.js';
import { bootPartitionOffset, fsckBootPartition, readBootFile, readBootPartition, writeBootFile } from './helpers/rpi-sdimage.js';
import { runRaspi3b } from './helpers/rpi-qemu.js';
import { buildUbootEnv, parseUbootEnv } from '../src/boot/uboot.js';

const BOARDS: RpiModel[] = ['rpi3', 'rpi4', 'rpi5', 'rpi-zero2w', 'rpi-cm4'];

function sector0(image: string): Buffer {
  const fd = openSync(image, 'r');
  try {
    const b = Buffer.alloc(512);
    readSync(fd, b, 0, 512, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('Raspberry Pi images match what the Pi firmware expects', () => {
  for (const board of BOARDS) {
    it(`minimal.yml on ${board}`, async () => {
      const img = await builtImage('minimal', board);
      expect(checkRpiPartitionTable(sector0(img.image))).toEqual([]);
      const table = JSON.parse(sh('sfdisk', ['--json', img.image])).partitiontable;
      expect(table.label).toBe('dos');
      expect(table.partitions[0].type).toBe('c');
      const files = readBootPartition(img.image);
      expect(checkRpiBootPartition(board, files)).toEqual([]);
      expect(fsckBootPartition(img.image).ok).toBe(true);
      // Slot B ships empty and out of BOOT_ORDER; the counter of A is full.
      const env = parseUbootEnv(files.get('uboot.env')!).vars;
      expect(env.BOOT_ORDER).toBe('A');
      expect(env.BOOT_B_LEFT).toBe('0');
      expect([...files.keys()].some((p) => p.startsWith('slot-b/'))).toBe(false);
    }, 300_000);
  }

  it('gateway.yml on rpi4: A/B root partitions in an MBR with an extended partition', async () => {
    const img = await builtImage('gateway', 'rpi4');
    const table = JSON.parse(sh('sfdisk', ['--json', img.image])).partitiontable;
    expect(table.partitions.map((p: { type: string }) => p.type)).toEqual(['c', '83', '83', 'f', 'c', '83']);
    expect(sh('sfdisk', ['--verify', img.image])).toMatch(/No errors detected/);
    expect(checkRpiBootPartition('rpi4', readBootPartition(img.image))).toEqual([]);
  }, 300_000);
});

describe('Raspberry Pi 3 under QEMU (raspi3b)', () => {
  it('boots the kernel, DTB and initramfs taken out of the built image to the marker', async () => {
    const img = await builtImage('minimal', 'rpi3');
    const dir = testDir();
    const part = (p: string) => {
      const out = join(dir, `rpi3-${p.replace(/\W+/g, '_')}`);
      execFileSync('sh', ['-c', `cat > "${out}"`], { input: readBootFile(img.image, p) });
      return out;
    };
    const cmdline = readBootFile(img.image, 'slot-a/cmdline.txt').toString().trim();
    const console = await runQemuDirect([
      '-M', 'raspi3b', '-m', '1G',
      '-kernel', part('slot-a/vmlinuz'),
      '-dtb', part('slot-a/broadcom/bcm2837-rpi-3-b.dtb'),
      '-initrd', part('slot-a/initrd.img'),
      '-append', `${cmdline} edgekit.slot=A`,
      '-serial', 'null', '-serial', 'stdio', '-display', 'none', '-monitor', 'none',
    ], /edgekit: minimal is up/, 300_000);
    expect(console).toMatch(/edgekit: edgekit minimal 1\.0, slot a/);
  }, 400_000);

  it('through U-Boot from the SD image: a broken slot B uses up its tries and slot A boots by itself', async () => {
    const img = await builtImage('minimal', 'rpi3');
    // QEMU's SD card wants a power-of-two size: a copy of the image, grown.
    const sd = join(testDir(), 'rpi3-sd.img');
    execFileSync('cp', ['--sparse=always', img.image, sd]);
    let size = 1 << 20;
    while (size < img.size) size *= 2;
    execFileSync('truncate', ['-s', String(size), sd]);

    // An update that went wrong: slot B holds a kernel that cannot boot, and is first in line.
    sh('mmd', ['-i', `${sd}@@${bootPartitionOffset(sd)}`, '::slot-b']);
    writeBootFile(sd, 'slot-b/vmlinuz', Buffer.alloc(4 << 20, 0x5a));
    writeBootFile(sd, 'slot-b/initrd.img', readBootFile(sd, 'slot-a/initrd.img'));
    writeBootFile(sd, 'slot-b/cmdline.txt', readBootFile(sd, 'slot-a/cmdline.txt'));
    const env = parseUbootEnv(readBootFile(sd, 'uboot.env')).vars;
    writeBootFile(sd, 'uboot.env', buildUbootEnv({ ...env, BOOT_ORDER: 'B A', BOOT_B_LEFT: '1' }, { size: 0x4000 }));

    const uboot = join(testDir(), 'rpi3-u-boot.bin');
    const dtb = join(testDir(), 'rpi3-boot.dtb');
    execFileSync('sh', ['-c', `cat > "${uboot}"`], { input: readBootFile(sd, 'u-boot.bin') });
    execFileSync('sh', ['-c', `cat > "${dtb}"`], { input: readBootFile(sd, 'bcm2837-rpi-3-b.dtb') });

    // Power cycle 1: U-Boot spends B's last try, B does not start, the board resets.
    const first = await runRaspi3b({ image: sd, ubootBin: uboot, dtb, stopAt: /did not start|Starting kernel[\s\S]*(Kernel panic|Synchronous Abort)|resetting/i });
    expect(first.console).toMatch(/booting slot B/);
    expect(parseUbootEnv(readBootFile(sd, 'uboot.env')).vars.BOOT_B_LEFT).toBe('0');
    // Power cycle 2: B has no tries left; A boots all the way.
    const second = await runRaspi3b({ image: sd, ubootBin: uboot, dtb, stopAt: /edgekit: minimal is up/ });
    expect(second.console).toMatch(/booting slot A/);
    expect(second.end).toBe('stopAt');
    expect(fsckBootPartition(sd).ok).toBe(true);
  }, 900_000);
});

function runQemuDirect(args: string[], marker: RegExp, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const q = spawn('qemu-system-aarch64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const timer = setTimeout(() => {
      q.kill('SIGKILL');
      reject(new Error(`no ${marker} within ${timeoutMs / 1000} s; console tail:\n${out.slice(-3000)}`));
    }, timeoutMs);
    const onData = (b: Buffer) => {
      out += b.toString('latin1');
      if (marker.test(out)) {
        clearTimeout(timer);
        q.kill('SIGKILL');
        resolve(out);
      }
    };
    q.stdout.on('data', onData);
    q.stderr.on('data', onData);
    q.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`QEMU exited before ${marker}; console tail:\n${out.slice(-3000)}`));
    });
  });
}
