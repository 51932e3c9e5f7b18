/**
 * The flash benchmark's image: a real edgekit build of about 2 GiB of which a few hundred MiB are
 * data. A board like qemu-x86_64 with 960 MiB system slots (slot B stays empty, so unmapped), and
 * a disk-root spec carrying one file of random bytes, which squashfs cannot shrink: the mapped part
 * is real, incompressible data, the rest of the image is zeros a flasher should skip.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile, open } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from './run-command.mjs';

export async function buildFlashBenchImage({ repo, work, payloadMiB, zstd }) {
  await mkdir(work, { recursive: true });
  const board = join(work, 'bench-x86_64.yml');
  await writeFile(
    board,
    `schema: 1
id: bench-x86_64
name: flash benchmark board (QEMU q35 layout, big slots)
arch: amd64
boot:
  firmware: uefi
  loader: systemd-boot
  loaderPackage: systemd-boot-efi
  loaderFile: usr/lib/systemd/boot/efi/systemd-bootx64.efi
  loaderTarget: EFI/BOOT/BOOTX64.EFI
kernel: debian-amd64
modules: [virtio_pci, virtio_blk]
console: { device: ttyS0, baud: 115200 }
disk: { device: vda }
layout:
  table: gpt
  boot: { size: 64MiB }
  system: { size: 960MiB }
  config: { size: 8MiB }
  data: { size: 32MiB }
update: { bootchooser: systemd-boot, tries: 3 }
flash:
  media: [usb]
`,
  );
  // Random bytes written in pieces: nothing image-sized is held in memory.
  const blob = await open(join(work, 'random.bin'), 'w');
  for (let i = 0; i < payloadMiB; i++) await blob.write(randomBytes(1 << 20));
  await blob.close();
  const spec = join(work, 'bench.yml');
  await writeFile(
    spec,
    `name: flashbench
version: "1.0"
root: disk
packages: [busybox-static]
files:
  - path: /srv/random.bin
    source: random.bin
`,
  );
  const key = join(work, 'bench.key');
  await runCommand('node', [join(repo, 'bin/edgekit.js'), 'keys', 'generate', '-o', key]);
  const out = join(work, 'out');
  const { stdout } = await runCommand('node', [
    join(repo, 'bin/edgekit.js'), 'build', spec, '--board', board, '--key', key, '-o', out, '--json', ...(zstd ? ['--zstd'] : []),
  ]);
  return { ...JSON.parse(stdout), key, pub: `${key}.pub` };
}
