/**
 * The builder's outputs, checked with the real tools that read each format: sfdisk/sgdisk for the
 * partition table, fsck.vfat and mtools for the FAT partitions, cpio for the initramfs, unsquashfs
 * and veritysetup for the root, bmaptool for the block map, zstd for the compressed image.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { builtImage, CLI, REPO, testDir, type BuiltImage } from './helpers/built-images.js';
import { extractRange, nonZeroBlocks, sh } from './helpers/image-bytes.js';
import type { SignedManifest } from '../src/image/manifest.js';
import { cacheDir } from '../src/util/cache.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function manifestOf(img: BuiltImage): SignedManifest {
  return JSON.parse(readFileSync(img.manifest, 'utf8'));
}

function partition(m: SignedManifest, role: string) {
  const p = m.signed.partitions.find((x) => x.role === role);
  if (!p) throw new Error(`no ${role} partition`);
  return p;
}

describe('minimal.yml on qemu-x86_64', () => {
  let img: BuiltImage;
  let m: SignedManifest;
  let work: string;
  beforeAll(async () => {
    img = await builtImage('minimal', 'qemu-x86_64', ['--zstd']);
    m = manifestOf(img);
    work = mkdtempSync(join(testDir(), 'minimal-'));
  });

  it('writes the image, block map, signed manifest, lock file, SBOM and .img.zst', () => {
    for (const f of [img.image, img.bmap, img.manifest, img.lock, img.sbom, img.zst!]) expect(existsSync(f), f).toBe(true);
    expect(m.signatures).toHaveLength(1);
    expect(m.signed.board).toBe('qemu-x86_64');
    expect(m.signed.slots.b).toBeNull();
    const lock = JSON.parse(readFileSync(img.lock, 'utf8'));
    expect(lock.packages.map((p: { name: string }) => p.name)).toContain('busybox-static');
    for (const p of lock.packages) expect(p.sha256).toMatch(/^[0-9a-f]{64}$/);
    const sbom = JSON.parse(readFileSync(img.sbom, 'utf8'));
    expect(sbom.spdxVersion).toBe('SPDX-2.3');
    const names = sbom.packages.map((p: { name: string }) => p.name);
    for (const p of m.signed.packages) expect(names).toContain(p.name);
  });

  it('has a GPT that sgdisk and sfdisk accept, with the partitions the manifest lists', () => {
    const verify = sh('sgdisk', ['-v', img.image]);
    expect(verify).toMatch(/No problems found/);
    const table = JSON.parse(sh('sfdisk', ['--json', img.image])).partitiontable;
    expect(table.label).toBe('gpt');
    const roles = table.partitions.map((p: { name: string }) => p.name);
    expect(roles).toEqual(['boot', 'config', 'data']);
    for (const p of table.partitions) {
      const mp = partition(m, p.name);
      expect(p.start * 512).toBe(mp.start);
      expect(p.size * 512).toBe(mp.size);
    }
    expect(table.partitions[0].type).toBe('C12A7328-F81F-11D2-BA4B-00A0C93EC93B');
  });

  it('has an ESP that fsck.vfat accepts, holding systemd-boot, one entry and slot A', () => {
    const esp = partition(m, 'boot');
    const file = extractRange(img.image, esp.start, esp.size, join(work, 'esp.img'));
    sh('fsck.vfat', ['-n', file]);
    const listing = sh('mdir', ['-/', '-b', '-i', file, '::'], { env: { MTOOLS_SKIP_CHECK: '1', LC_ALL: 'C.UTF-8' } });
    for (const want of ['::/EFI/BOOT/BOOTX64.EFI', '::/loader/loader.conf', '::/loader/entries/edgekit-1-a.conf', '::/slot-a/vmlinuz', '::/slot-a/initrd.img']) {
      expect(listing).toContain(want);
    }
    const entry = sh('mtype', ['-i', file, '::/loader/entries/edgekit-1-a.conf'], { env: { MTOOLS_SKIP_CHECK: '1' } });
    expect(entry).toMatch(/^linux \/slot-a\/vmlinuz$/m);
    expect(entry).toMatch(/^options .*console=ttyS0,115200.*edgekit\.slot=a/m);
  });

  it('ships the kernel byte-identical to the Debian package', async () => {
    const esp = partition(m, 'boot');
    const file = join(work, 'esp.img');
    if (!existsSync(file)) extractRange(img.image, esp.start, esp.size, file);
    const kernel = execFileSync('mcopy', ['-n', '-i', file, '::/slot-a/vmlinuz', '-'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, maxBuffer: 64 << 20 });
    const lock = JSON.parse(readFileSync(img.lock, 'utf8'));
    const kpkg = lock.packages.find((p: { name: string }) => p.name === m.signed.kernel.package);
    const deb = join(cacheDir('debs'), `${kpkg.sha256}.deb`);
    // dpkg's own extraction, not ours: the reference bytes come from outside edgekit.
    const tar = execFileSync('dpkg-deb', ['--fsys-tarfile', deb], { maxBuffer: 1 << 30 });
    const original = execFileSync('tar', ['-xOf', '-', `./${m.signed.kernel.image}`], { input: tar, maxBuffer: 256 << 20 });
    expect(sha256(kernel)).toBe(sha256(original));
    expect(m.signed.kernel.sha256).toBe(sha256(original));
  });

  it('has an initramfs that cpio lists: init, busybox, modules', () => {
    const esp = join(work, 'esp.img');
    if (!existsSync(esp)) extractRange(img.image, partition(m, 'boot').start, partition(m, 'boot').size, esp);
    const gz = execFileSync('mcopy', ['-n', '-i', esp, '::/slot-a/initrd.img', '-'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, maxBuffer: 64 << 20 });
    const cpio = execFileSync('gzip', ['-dc'], { input: gz, maxBuffer: 256 << 20 });
    const list = sh('cpio', ['-t', '--quiet'], { input: cpio }).split('\n');
    for (const want of ['init', 'usr/bin/busybox', 'usr/sbin/init', 'etc/inittab', 'etc/edgekit/rc.sysinit']) expect(list).toContain(want);
    expect(list.some((p) => p.startsWith('usr/lib/modules/edgekit/') && p.endsWith('.ko'))).toBe(true);
    // Nothing the device never reads: manuals and translations are left out.
    expect(list.some((p) => p.startsWith('usr/share/man/') || p.startsWith('usr/share/locale/'))).toBe(false);
  });

  it('has a config partition fsck.vfat accepts', () => {
    const cfg = partition(m, 'config');
    const file = extractRange(img.image, cfg.start, cfg.size, join(work, 'config.img'));
    sh('fsck.vfat', ['-n', file]);
    expect(sh('mdir', ['-b', '-i', file, '::'], { env: { MTOOLS_SKIP_CHECK: '1' } })).toContain('README.TXT');
  });

  it('is tiny: at most 16 MiB of non-zero 4 KiB blocks, counted by scanning the image', () => {
    const blocks = nonZeroBlocks(img.image);
    expect(blocks * 4096).toBeLessThanOrEqual(16 * 1024 * 1024);
    // The block map maps every non-zero block (it may map a few zero ones, never miss data).
    expect(img.mappedBytes).toBeGreaterThanOrEqual(blocks * 4096);
  });

  it('has a block map bmaptool uses to reproduce the image byte for byte', () => {
    const copy = join(work, 'copy.img');
    sh('bmaptool', ['copy', '--bmap', img.bmap, img.image, copy]);
    expect(statSync(copy).size).toBe(statSync(img.image).size);
    sh('cmp', [img.image, copy]);
  });

  it('builds again with no network at all (warm cache, --offline), byte for byte the same', async () => {
    if (process.getuid?.() !== 0) return; // unshare -n needs root
    const out = join(work, 'offline');
    // A new network namespace has no interfaces but a down loopback: any download would fail.
    sh('unshare', ['-n', 'node', CLI, 'build', join(REPO, 'examples', 'minimal.yml'), '--board', 'qemu-x86_64', '--key', img.key, '-o', out, '--offline']);
    sh('cmp', [img.image, join(out, 'minimal-qemu-x86_64.img')]);
  });

  it('has a .img.zst that decompresses to the image', () => {
    const out = join(work, 'unzst.img');
    sh('zstd', ['-q', '-d', img.zst!, '-o', out]);
    sh('cmp', [img.image, out]);
  });
});

describe('gateway.yml on qemu-x86_64', () => {
  let img: BuiltImage;
  let m: SignedManifest;
  let work: string;
  beforeAll(async () => {
    img = await builtImage('gateway', 'qemu-x86_64');
    m = manifestOf(img);
    work = mkdtempSync(join(testDir(), 'gateway-'));
  });

  it('lays out A/B system partitions; slot B ships empty', () => {
    const table = JSON.parse(sh('sfdisk', ['--json', img.image])).partitiontable;
    expect(table.partitions.map((p: { name: string }) => p.name)).toEqual(['boot', 'system-a', 'system-b', 'config', 'data']);
    const b = partition(m, 'system-b');
    const bytes = extractRange(img.image, b.start, Math.min(b.size, 16 << 20), join(work, 'b.img'));
    expect(readFileSync(bytes).every((x) => x === 0)).toBe(true);
    expect(m.signed.slots.a.root).toBe('disk');
  });

  it('has a root that unsquashfs reads, with the ssh server, the key from the spec and no docs', () => {
    const p = m.signed.payloads.find((x) => x.name === 'system-a')!;
    const file = extractRange(img.image, p.offset, p.verity!.hashOffset, join(work, 'root.sqfs'));
    expect(sh('unsquashfs', ['-s', file])).toMatch(/Compression lz4/);
    const list = sh('unsquashfs', ['-lls', '-d', '', file]);
    expect(list).toMatch(/usr\/sbin\/dropbear/);
    expect(list).toMatch(/home\/admin\/\.ssh\/authorized_keys/);
    expect(list).toMatch(/etc\/dropbear -> \.\.\/data\/etc\/dropbear/);
    expect(list).not.toMatch(/usr\/share\/man\//);
  });

  it('has a dm-verity hash tree veritysetup accepts with the manifest root hash', () => {
    const p = m.signed.payloads.find((x) => x.name === 'system-a')!;
    const file = extractRange(img.image, p.offset, p.size, join(work, 'root-verity.img'));
    sh('veritysetup', ['verify', '--no-superblock', `--hash-offset=${p.verity!.hashOffset}`, `--data-blocks=${p.verity!.dataBlocks}`, `--salt=${p.verity!.salt}`, file, file, p.verity!.rootHash]);
    expect(m.signed.slots.a.cmdline).toContain(`edgekit.verity=${p.verity!.rootHash}:`);
  });

  it('has a first-stage initramfs with dmsetup and the verity modules', () => {
    const esp = extractRange(img.image, partition(m, 'boot').start, partition(m, 'boot').size, join(work, 'esp.img'));
    const gz = execFileSync('mcopy', ['-n', '-i', esp, '::/slot-a/initrd.img', '-'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, maxBuffer: 64 << 20 });
    const list = sh('cpio', ['-t', '--quiet'], { input: execFileSync('gzip', ['-dc'], { input: gz, maxBuffer: 256 << 20 }) }).split('\n');
    for (const want of ['init', 'usr/sbin/dmsetup', 'usr/lib/modules/edgekit/dm_verity.ko', 'usr/lib/modules/edgekit/squashfs.ko']) expect(list).toContain(want);
  });
});
