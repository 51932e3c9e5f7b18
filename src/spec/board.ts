/**
 * A board: one YAML file that tells the builder, the flasher and the update agent everything about a
 * hardware target. `schema: 1` is the file format version; fields are documented in docs/boards.md.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { EdgekitError } from '../util/errors.js';
import { loadYamlFile, SpecError, type Loaded } from './load.js';
import { sizeSchema } from './size.js';
import { packageDir } from './paths.js';
import { kernelSchema, kernelsDir } from './kernel.js';

const id = z.string().regex(/^[a-z0-9][a-z0-9-_.]*$/, 'lower-case letters, digits, - _ . only');
const hex16 = z.number().int().min(0).max(0xffff);

export const rpiModels = ['rpi3', 'rpi4', 'rpi5', 'rpi-zero2w', 'rpi-cm4'] as const;

const uefiBoot = z.strictObject({
  firmware: z.literal('uefi'),
  /** The bootloader on the ESP; systemd-boot counts tries per entry (`slot-b+3.conf`). */
  loader: z.literal('systemd-boot'),
  /** Debian package holding the EFI binary and the path of that binary inside it. */
  loaderPackage: z.string().default('systemd-boot-efi'),
  loaderFile: z.string(),
  /** Where firmware looks for a removable-media loader (EFI/BOOT/BOOTX64.EFI, BOOTAA64.EFI). */
  loaderTarget: z.string(),
});

const rpiBoot = z.strictObject({
  firmware: z.literal('rpi'),
  model: z.enum(rpiModels),
  /** The Pi firmware (GPU side) from Debian's raspi-firmware package; Pi 5 boots from its EEPROM. */
  firmwarePackage: z.string().default('raspi-firmware'),
  firmwareFiles: z.array(z.string()).default([]),
  /** uboot: A/B through U-Boot's boot counter (works with Debian's kernel); tryboot needs kernel support. */
  loader: z.enum(['uboot', 'tryboot']),
  uboot: z
    .strictObject({
      package: z.string().default('u-boot-rpi'),
      file: z.string(),
    })
    .optional(),
  config: z
    .strictObject({
      dtoverlays: z.array(z.string()).default([]),
      dtparams: z.array(z.string()).default([]),
      extra: z.array(z.string()).default([]),
    })
    .default({ dtoverlays: [], dtparams: [], extra: [] }),
});

const partition = z.strictObject({ size: sizeSchema });

export const boardSchema = z.strictObject({
  schema: z.literal(1, { message: 'this edgekit reads board files with `schema: 1`' }),
  id,
  name: z.string().min(1),
  vendor: z.string().optional(),
  /** Debian architecture of the userland and kernel. */
  arch: z.enum(['amd64', 'arm64']),
  boot: z.discriminatedUnion('firmware', [uefiBoot, rpiBoot]),
  /** A kernel/<id>.yml entry. */
  kernel: id,
  /** Device trees copied from the kernel package (paths under usr/lib/linux-image-*). */
  devicetrees: z.array(z.string()).default([]),
  /** Modules this hardware needs to reach its root disk and console; dependencies are added. */
  modules: z.array(z.string()).default([]),
  console: z.strictObject({ device: z.string(), baud: z.number().int().positive().default(115200) }),
  /** Kernel command-line words the board needs besides the console and root. */
  cmdline: z.array(z.string()).default([]),
  /** Name of the disk the kernel sees the boot media as (for root= and the data partition). */
  disk: z.strictObject({ device: z.string(), partitionPrefix: z.string().default('') }),
  layout: z.strictObject({
    table: z.enum(['gpt', 'mbr']),
    alignment: sizeSchema.default(1024 * 1024),
    /** ESP or Pi boot partition: bootloader and both slots' kernels and initramfs. */
    boot: partition,
    /** One per slot (A and B): the read-only root and its dm-verity hash tree. */
    system: partition,
    /** Per-device settings written at flash time (FAT, unsigned). */
    config: partition,
    /** Writable state; formatted on first boot. The size here is its minimum in the image. */
    data: partition,
  }),
  update: z.strictObject({
    /** How a slot is tried once and kept or dropped: see docs/boards.md. */
    bootchooser: z.enum(['systemd-boot', 'uboot', 'tryboot']),
    tries: z.number().int().min(1).max(9).default(3),
  }),
  flash: z.strictObject({
    media: z.array(z.enum(['sd', 'usb', 'emmc', 'nvme', 'rpiboot'])).min(1),
    /** USB boot mode (Broadcom usbboot): vendor 0x0a5c and the SoC's product ids. */
    rpiboot: z.strictObject({ vendorId: hex16, productIds: z.array(hex16).min(1) }).optional(),
  }),
  emulation: z
    .strictObject({
      qemu: z.strictObject({
        arch: z.enum(['x86_64', 'aarch64']),
        machine: z.string(),
        cpu: z.string().optional(),
        memory: z.number().int().positive().default(512),
        firmware: z.enum(['uefi', 'none']),
        disk: z.enum(['virtio', 'sd']).default('virtio'),
        /** NIC model for user networking; QEMU's default for the machine when absent. */
        net: z.string().optional(),
      }),
    })
    .optional(),
  /** What this board cannot do with the kernel it names, said to the user at build time. */
  limits: z
    .array(z.strictObject({ when: z.enum(['root-on-disk']), message: z.string() }))
    .default([]),
});

export type Board = z.infer<typeof boardSchema>;

export function boardsDir(): string {
  return join(packageDir(), 'boards');
}

export function listBoardIds(dir = boardsDir()): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.yml'))
    .map((f) => f.slice(0, -4))
    .sort();
}

/** Loads and checks a board file, including rules a schema cannot say alone. */
export function loadBoardFile(file: string): Loaded<Board> {
  const loaded = loadYamlFile(file, boardSchema);
  checkBoardRules(loaded);
  return loaded;
}

export function loadBoard(idOrFile: string, dir = boardsDir()): Loaded<Board> {
  if (idOrFile.endsWith('.yml') || idOrFile.includes('/')) return loadBoardFile(idOrFile);
  const ids = listBoardIds(dir);
  if (!ids.includes(idOrFile)) {
    throw new EdgekitError(`unknown board "${idOrFile}" (boards: ${ids.join(', ')})`);
  }
  return loadBoardFile(join(dir, `${idOrFile}.yml`));
}

function checkBoardRules(loaded: Loaded<Board>): void {
  const b = loaded.value;
  const problems: Array<{ path: (string | number)[]; message: string }> = [];
  if (b.boot.firmware === 'rpi') {
    if (b.layout.table !== 'mbr' && b.boot.model !== 'rpi4' && b.boot.model !== 'rpi5' && b.boot.model !== 'rpi-cm4')
      problems.push({ path: ['layout', 'table'], message: `${b.boot.model} boots only from an MBR partition table` });
    if (b.boot.loader === 'uboot' && !b.boot.uboot)
      problems.push({ path: ['boot', 'uboot'], message: 'loader: uboot needs a uboot: section (package, file)' });
    if (b.update.bootchooser !== b.boot.loader)
      problems.push({ path: ['update', 'bootchooser'], message: `must match boot.loader (${b.boot.loader})` });
    if (b.flash.media.includes('rpiboot') && !b.flash.rpiboot)
      problems.push({ path: ['flash', 'media'], message: 'rpiboot media needs flash.rpiboot with USB ids' });
  } else {
    if (b.layout.table !== 'gpt') problems.push({ path: ['layout', 'table'], message: 'UEFI boards use a GPT' });
    if (b.update.bootchooser !== 'systemd-boot')
      problems.push({ path: ['update', 'bootchooser'], message: 'UEFI boards count boot tries with systemd-boot' });
  }
  const MiB = 1024 * 1024;
  if (b.layout.alignment % MiB !== 0)
    problems.push({ path: ['layout', 'alignment'], message: 'must be a multiple of 1MiB (partitions start on 1 MiB boundaries)' });
  else
    for (const role of ['boot', 'system', 'config', 'data'] as const) {
      if (b.layout[role].size === 0 || b.layout[role].size % b.layout.alignment !== 0)
        problems.push({ path: ['layout', role, 'size'], message: `must be a non-zero multiple of layout.alignment (${b.layout.alignment} bytes)` });
    }
  const kernelFile = join(kernelsDir(), `${b.kernel}.yml`);
  if (!existsSync(kernelFile)) problems.push({ path: ['kernel'], message: `no kernel entry ${b.kernel} (kernel/${b.kernel}.yml)` });
  else {
    const k = loadYamlFile(kernelFile, kernelSchema).value;
    if (k.arch !== b.arch) problems.push({ path: ['kernel'], message: `kernel ${b.kernel} is for ${k.arch}, this board is ${b.arch}` });
    if (b.boot.firmware === 'rpi' && b.boot.loader === 'tryboot' && !k.tryboot)
      problems.push({ path: ['boot', 'loader'], message: `kernel ${b.kernel} cannot arm tryboot (tryboot: false); use loader: uboot` });
  }
  if (b.emulation?.qemu) {
    const want = b.arch === 'amd64' ? 'x86_64' : 'aarch64';
    if (b.emulation.qemu.arch !== want)
      problems.push({ path: ['emulation', 'qemu', 'arch'], message: `arch ${b.arch} runs under qemu-system-${want}` });
  }
  if (problems.length) {
    throw new SpecError(
      problems.map((p) => ({ file: loaded.file, line: loaded.lineOf(p.path), field: p.path.join('.'), message: p.message })),
    );
  }
}
