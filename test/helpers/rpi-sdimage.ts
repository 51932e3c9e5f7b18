/**
 * A Raspberry Pi SD card image made with host tools (sfdisk, mkfs.vfat, mtools): an MBR whose
 * first partition is FAT32 (type 0x0c) holding the boot files. Stands in for the image builder
 * in the boot-chain tests; the read/write helpers work on any image with that layout.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import type { RpiBootFile } from '../../src/boot/rpi.js';

const MiB = 1024 * 1024;

function tool(cmd: string, args: string[], input?: string | Buffer): Buffer {
  const r = spawnSync(cmd, args, { input, maxBuffer: 512 * MiB, env: { ...process.env, LC_ALL: 'C', MTOOLS_SKIP_CHECK: '1' } });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.toString().trim()}`);
  return r.stdout;
}

export interface SdImageOptions {
  /** Size of the FAT boot partition. */
  bootMiB: number;
  /** Where it starts (MiB); 1 MiB is the usual alignment. */
  startMiB?: number;
}

/** The byte offset of partition 1, read from the MBR. */
export function bootPartitionOffset(image: string): number {
  const fd = openSync(image, 'r');
  try {
    const mbr = Buffer.alloc(512);
    readSync(fd, mbr, 0, 512, 0);
    return mbr.readUInt32LE(446 + 8) * 512;
  } finally {
    closeSync(fd);
  }
}

function mtoolsImage(image: string): string {
  return `${image}@@${bootPartitionOffset(image)}`;
}

/**
 * Writes an SD image at `image`. QEMU's SD card model wants a power-of-two size, so the image
 * is rounded up to one.
 */
export function buildRpiSdImage(image: string, files: RpiBootFile[], opts: SdImageOptions): void {
  const start = opts.startMiB ?? 1;
  let size = MiB;
  while (size < (start + opts.bootMiB) * MiB) size *= 2;
  tool('truncate', ['-s', String(size), image]);
  tool('sfdisk', ['-q', image], `label: dos\nstart=${start * 2048}, size=${opts.bootMiB * 2048}, type=c\n`);
  tool('mkfs.vfat', ['-F', '32', '-n', 'BOOT', '--offset', String(start * 2048), image, String(opts.bootMiB * 1024)]);
  const img = mtoolsImage(image);
  const dirs = new Set<string>();
  for (const f of files) for (let d = dirname(f.path); d !== '.'; d = dirname(d)) dirs.add(d);
  for (const d of [...dirs].sort((a, b) => a.length - b.length)) tool('mmd', ['-i', img, `::${d}`]);
  const tmp = mkdtempSync(join(tmpdir(), 'edgekit-rpi-sd-'));
  try {
    for (const f of files) {
      let src = f.file;
      if (f.data) {
        src = join(tmp, 'data');
        writeFileSync(src, f.data);
      }
      if (!src) throw new Error(`boot file ${f.path} has neither data nor file`);
      tool('mcopy', ['-o', '-i', img, src, `::${f.path}`]);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

export function readBootFile(image: string, path: string): Buffer {
  return tool('mcopy', ['-n', '-i', mtoolsImage(image), `::${path}`, '-']);
}

export function writeBootFile(image: string, path: string, data: Buffer): void {
  const tmp = mkdtempSync(join(tmpdir(), 'edgekit-rpi-sd-'));
  try {
    writeFileSync(join(tmp, 'f'), data);
    tool('mcopy', ['-o', '-i', mtoolsImage(image), join(tmp, 'f'), `::${path}`]);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Every file on the boot partition, path -> bytes (for checkRpiBootPartition). */
export function readBootPartition(image: string): Map<string, Buffer> {
  const listing = tool('mdir', ['-/', '-b', '-i', mtoolsImage(image), '::']).toString('utf8');
  const out = new Map<string, Buffer>();
  for (const line of listing.split('\n')) {
    const p = line.trim().replace(/^::\/?/, '');
    if (!p || p.endsWith('/')) continue;
    out.set(p, readBootFile(image, p));
  }
  return out;
}

/** fsck.fat -n on the boot partition, run on a copy cut out of the image. */
export function fsckBootPartition(image: string): { ok: boolean; output: string } {
  const tmp = mkdtempSync(join(tmpdir(), 'edgekit-rpi-fsck-'));
  try {
    const part = join(tmp, 'p1');
    const offset = bootPartitionOffset(image);
    tool('dd', [`if=${image}`, `of=${part}`, 'bs=1M', `skip=${offset}`, 'iflag=skip_bytes', 'status=none']);
    const r = spawnSync('fsck.vfat', ['-n', part], { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
    return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
