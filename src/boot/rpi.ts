/**
 * The Raspberry Pi boot partition: what the Pi firmware reads (config.txt, start*.elf/fixup*.dat,
 * DTBs) and what comes after it.
 *
 * Two ways to boot a slot:
 * - 'uboot' (Debian's kernels): the firmware starts U-Boot (kernel=u-boot.bin); boot.scr picks
 *   the slot from the boot counter in uboot.env and loads /slot-x/{vmlinuz,initrd.img,cmdline.txt}.
 *   Debian's kernel cannot arm the firmware's one-shot `tryboot` flag, so the counter is U-Boot's.
 * - 'tryboot' (kernels that can): the firmware loads the slot itself through os_prefix=slot-x/;
 *   config.txt names the committed slot, tryboot.txt the slot on trial, which the firmware reads
 *   instead of config.txt for one boot after `reboot "0 tryboot"`. With one FAT partition for both
 *   slots this is the file-level form; autoboot.txt's boot_partition form needs a FAT per slot.
 *
 * Everything here is data: the caller copies `file` entries and writes `data` entries into the
 * FAT boot partition. Output is sorted by path and depends only on the options.
 */
import { basename } from 'node:path';
import { buildUbootEnv, buildUbootScript } from './uboot.js';
import { abBootScript, counterVar, RPI_LOAD_ADDRESSES, type AbSlot } from './uboot-script.js';
import { comparePaths } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';

export type RpiModel = 'rpi3' | 'rpi4' | 'rpi5' | 'rpi-zero2w' | 'rpi-cm4';

export interface RpiModelInfo {
  title: string;
  /** Files from raspi-firmware the firmware needs on the partition; none on the Pi 5 (EEPROM). */
  firmwareFiles: string[];
  /** The DTB U-Boot asks for in ${fdtfile} (its board table), relative to a slot folder. */
  ubootFdtfile: string;
  /** The DTB in Debian's kernel package (usr/lib/linux-image-VERSION/) for this board's main variant. */
  kernelDtb: string;
}

export const RPI_MODELS: Record<RpiModel, RpiModelInfo> = {
  rpi3: {
    title: 'Raspberry Pi 3',
    firmwareFiles: ['bootcode.bin', 'fixup.dat', 'start.elf'],
    ubootFdtfile: 'broadcom/bcm2837-rpi-3-b.dtb',
    kernelDtb: 'broadcom/bcm2837-rpi-3-b.dtb',
  },
  'rpi-zero2w': {
    title: 'Raspberry Pi Zero 2 W',
    firmwareFiles: ['bootcode.bin', 'fixup.dat', 'start.elf'],
    ubootFdtfile: 'broadcom/bcm2837-rpi-zero-2-w.dtb',
    kernelDtb: 'broadcom/bcm2837-rpi-zero-2-w.dtb',
  },
  rpi4: {
    title: 'Raspberry Pi 4',
    firmwareFiles: ['fixup4.dat', 'start4.elf'],
    ubootFdtfile: 'broadcom/bcm2711-rpi-4-b.dtb',
    kernelDtb: 'broadcom/bcm2711-rpi-4-b.dtb',
  },
  'rpi-cm4': {
    title: 'Raspberry Pi Compute Module 4',
    firmwareFiles: ['fixup4.dat', 'start4.elf'],
    // U-Boot 2025.01 asks for bcm2711-rpi-cm4.dtb; Linux only has the IO-board tree.
    ubootFdtfile: 'broadcom/bcm2711-rpi-cm4.dtb',
    kernelDtb: 'broadcom/bcm2711-rpi-cm4-io.dtb',
  },
  rpi5: {
    title: 'Raspberry Pi 5',
    firmwareFiles: [],
    ubootFdtfile: 'broadcom/bcm2712-rpi-5-b.dtb',
    kernelDtb: 'broadcom/bcm2712-rpi-5-b.dtb',
  },
};

/** Where the Raspberry Pi U-Boot builds (rpi_3, rpi_4, rpi_arm64) keep their environment. */
export const RPI_UBOOT_ENV = {
  interface: 'mmc',
  devicePart: '0:1', // CONFIG_ENV_FAT_DEVICE_AND_PART
  file: 'uboot.env', // CONFIG_ENV_FAT_FILE
  size: 0x4000, // CONFIG_ENV_SIZE
  redundant: false, // CONFIG_SYS_REDUNDAND_ENVIRONMENT is not set
} as const;

export interface RpiBootFile {
  /** Path inside the FAT boot partition, '/'-separated, no leading slash. */
  path: string;
  data?: Buffer;
  /** A file on disk to copy (firmware, U-Boot, kernel, DTB). */
  file?: string;
}

export interface RpiSlotFiles {
  /** 'A' or 'B'. */
  name: string;
  /** Path of the kernel Image (Debian's vmlinuz); absent for a slot that ships empty. */
  kernel?: string;
  initrd?: string;
  /** The kernel command line, one line. */
  cmdline: string;
  /** DTBs from the slot's kernel package: name (e.g. 'broadcom/bcm2837-rpi-3-b.dtb') -> path. */
  dtbs: Record<string, string>;
}

export interface RpiBootOptions {
  model: RpiModel;
  /** raspi-firmware's files (usr/lib/raspi-firmware); may be omitted for the Pi 5. */
  firmwareDir?: string;
  /** Or: where each raspi-firmware file is, by its path under the firmware folder ('start4.elf', 'overlays/x.dtbo'). */
  firmwareFile?: (name: string) => string;
  /** The firmware files to copy; default: the model's (RPI_MODELS). */
  firmwareFiles?: string[];
  /** Extra config.txt lines (a board's `boot.config.extra`). */
  configExtra?: string[];
  loader?: 'uboot' | 'tryboot';
  /** u-boot.bin (Debian's u-boot-rpi: usr/lib/u-boot/rpi_arm64/u-boot.bin); for loader 'uboot'. */
  ubootBin?: string;
  /** DTBs the firmware loads from the partition root: name -> path (names as in the kernel package). */
  dtbs: Record<string, string>;
  /** Serial console on the 40-pin header (GPIO 14/15): enable_uart=1. Default true. */
  consoleUart?: boolean;
  /** Overlays (raspi-firmware's overlays/ folder) and parameters for the firmware's device tree. */
  dtoverlays?: string[];
  dtparams?: string[];
  /**
   * Which device tree the kernel gets under U-Boot: the slot's own DTB (follows the slot's kernel)
   * or the one the firmware loaded and patched (carries dtoverlay/dtparam and the firmware's
   * fixups). Default: 'firmware' when overlays or parameters are asked for, else 'slot'.
   */
  deviceTree?: 'slot' | 'firmware';
  slots: RpiSlotFiles[];
  /** Tries per slot before falling back (U-Boot loader). Default 3. */
  tries?: number;
  /** Initial BOOT_ORDER; default the slots in order ("A B"). */
  bootOrder?: string;
  /** SOURCE_DATE_EPOCH for the boot.scr header. */
  sourceDateEpoch?: number;
}

const SLOT_NAMES = ['A', 'B'];

export function slotDir(name: string): string {
  return `slot-${name.toLowerCase()}`;
}

const PARAM = /^[A-Za-z0-9_,.=:-]+$/;

/** The files of a Raspberry Pi boot partition, sorted by path. */
export function rpiBootFiles(opts: RpiBootOptions): RpiBootFile[] {
  const info = RPI_MODELS[opts.model];
  if (!info) throw new EdgekitError(`Raspberry Pi boot: unknown model ${JSON.stringify(opts.model)}`);
  const loader = opts.loader ?? 'uboot';
  const where = `Raspberry Pi boot (${opts.model})`;
  if (opts.slots.length < 1 || opts.slots.length > 2) throw new EdgekitError(`${where}: expected 1 or 2 slots, got ${opts.slots.length}`);
  opts.slots.forEach((s, i) => {
    if (s.name !== SLOT_NAMES[i]) throw new EdgekitError(`${where}: slot ${i + 1} must be named ${SLOT_NAMES[i]}, got ${JSON.stringify(s.name)}`);
    if (/[\r\n]/.test(s.cmdline.trim())) throw new EdgekitError(`${where}: slot ${s.name} command line must be one line`);
  });
  for (const line of opts.configExtra ?? []) {
    if (/[\r\n]/.test(line)) throw new EdgekitError(`${where}: config.txt line ${JSON.stringify(line)} must be one line`);
  }
  for (const p of [...(opts.dtoverlays ?? []), ...(opts.dtparams ?? [])]) {
    if (!PARAM.test(p)) throw new EdgekitError(`${where}: dtoverlay/dtparam ${JSON.stringify(p)} has characters config.txt cannot take`);
  }
  const files: RpiBootFile[] = [];
  const add = (f: RpiBootFile) => files.push(f);

  const firmware = (name: string, why: string): string => {
    if (opts.firmwareFile) return opts.firmwareFile(name);
    if (opts.firmwareDir) return `${opts.firmwareDir}/${name}`;
    throw new EdgekitError(`${where}: ${why} needs the raspi-firmware files (firmwareDir or firmwareFile)`);
  };
  for (const name of opts.firmwareFiles ?? info.firmwareFiles) add({ path: name, file: firmware(name, name) });
  for (const name of opts.dtoverlays ?? []) {
    const overlay = name.split(',')[0];
    add({ path: `overlays/${overlay}.dtbo`, file: firmware(`overlays/${overlay}.dtbo`, `dtoverlay ${overlay}`) });
  }
  // The firmware loads the board's DTB from the root (upstream names, see upstream_kernel below).
  for (const [name, path] of Object.entries(opts.dtbs)) add({ path: basename(name), file: path });

  if (loader === 'uboot') {
    if (!opts.ubootBin) throw new EdgekitError(`${where}: ubootBin is required for the U-Boot loader`);
    add({ path: 'u-boot.bin', file: opts.ubootBin });
    add({ path: 'config.txt', data: Buffer.from(configTxt(opts, info, { kernel: 'u-boot.bin' })) });
    for (const s of opts.slots) {
      const dir = slotDir(s.name);
      addSlotKernel(add, dir, s);
      for (const [name, path] of Object.entries(s.dtbs)) add({ path: `${dir}/${name}`, file: path });
      // U-Boot asks for its own name for the board's tree; give it the kernel's tree under that name.
      if (info.ubootFdtfile !== info.kernelDtb && s.dtbs[info.kernelDtb] && !s.dtbs[info.ubootFdtfile]) {
        add({ path: `${dir}/${info.ubootFdtfile}`, file: s.dtbs[info.kernelDtb] });
      }
    }
    const env = initialUbootEnv(opts);
    add({ path: RPI_UBOOT_ENV.file, data: buildUbootEnv(env, { size: RPI_UBOOT_ENV.size }) });
    add({ path: 'boot.scr', data: buildUbootScript(rpiAbScriptText(opts, env), { name: 'edgekit A/B', arch: 'arm64', timestamp: opts.sourceDateEpoch ?? 0 }) });
  } else {
    const [first, second] = orderedSlots(opts);
    add({ path: 'config.txt', data: Buffer.from(configTxt(opts, info, { kernel: 'vmlinuz', osPrefix: slotDir(first), initrd: hasInitrd(opts) })) });
    if (second) {
      add({ path: 'tryboot.txt', data: Buffer.from(configTxt(opts, info, { kernel: 'vmlinuz', osPrefix: slotDir(second), initrd: hasInitrd(opts), tryboot: true })) });
    }
    for (const s of opts.slots) {
      const dir = slotDir(s.name);
      addSlotKernel(add, dir, s);
      // With os_prefix the firmware looks for the DTB beside the kernel, by its plain name.
      for (const [name, path] of Object.entries(s.dtbs)) add({ path: `${dir}/${basename(name)}`, file: path });
    }
  }
  const seen = new Set<string>();
  for (const f of files) {
    if (seen.has(f.path)) throw new EdgekitError(`${where}: two files at ${f.path}`);
    seen.add(f.path);
  }
  return files.sort((a, b) => comparePaths(a.path, b.path));
}

function addSlotKernel(add: (f: RpiBootFile) => void, dir: string, s: RpiSlotFiles): void {
  if (!s.kernel) return; // an empty slot: the first update fills it
  add({ path: `${dir}/vmlinuz`, file: s.kernel });
  if (s.initrd) add({ path: `${dir}/initrd.img`, file: s.initrd });
  add({ path: `${dir}/cmdline.txt`, data: Buffer.from(s.cmdline.trim() + '\n') });
}

function hasInitrd(opts: RpiBootOptions): boolean {
  const filled = opts.slots.filter((s) => s.kernel);
  const n = filled.filter((s) => s.initrd).length;
  if (n !== 0 && n !== filled.length) throw new EdgekitError(`Raspberry Pi boot (${opts.model}): either every slot has an initramfs or none`);
  return n > 0;
}

function orderedSlots(opts: RpiBootOptions): string[] {
  const names = opts.slots.filter((s) => s.kernel).map((s) => s.name);
  const order = (opts.bootOrder ?? names.join(' ')).split(/\s+/).filter(Boolean);
  if (order.length !== names.length || !names.every((n) => order.includes(n))) {
    throw new EdgekitError(`Raspberry Pi boot (${opts.model}): bootOrder ${JSON.stringify(opts.bootOrder)} must name each slot (${names.join(' ')}) once`);
  }
  return order;
}

interface ConfigTxtParts {
  kernel: string;
  osPrefix?: string;
  initrd?: boolean;
  tryboot?: boolean;
}

/** config.txt (or tryboot.txt): only what this boot chain needs, each line with its reason. */
function configTxt(opts: RpiBootOptions, info: RpiModelInfo, p: ConfigTxtParts): string {
  const out: string[] = [
    `# ${info.title}: read by the Raspberry Pi firmware. Generated by edgekit.`,
    ...(p.tryboot ? ['# Read instead of config.txt for one boot after `reboot "0 tryboot"`: the slot on trial.'] : []),
    '',
    '# Start the cores in AArch64 and load kernel= as a 64-bit image.',
    'arm_64bit=1',
  ];
  if (p.osPrefix) {
    out.push('# The slot\'s kernel, initramfs, cmdline.txt and DTB are read from this folder.', `os_prefix=${p.osPrefix}/`);
  }
  out.push(
    p.kernel === 'u-boot.bin' ? '# U-Boot runs first: boot.scr picks the A/B slot with the counters in uboot.env.' : '# The slot\'s kernel.',
    `kernel=${p.kernel}`,
  );
  if (p.initrd) out.push('initramfs initrd.img followkernel');
  out.push(
    `# Device trees by their upstream Linux names (${basename(info.kernelDtb)}), as Debian's kernel ships them.`,
    'upstream_kernel=1',
  );
  if (opts.consoleUart ?? true) {
    out.push('# Serial console on GPIO 14/15 (on the Pi 3 and Zero 2 W this also pins the core clock the mini UART needs).', 'enable_uart=1');
  }
  for (const o of opts.dtoverlays ?? []) out.push(`dtoverlay=${o}`);
  for (const d of opts.dtparams ?? []) out.push(`dtparam=${d}`);
  if (opts.configExtra?.length) out.push('# From the board file (boot.config.extra).', ...opts.configExtra);
  return out.join('\n') + '\n';
}

/**
 * The variables of the shipped uboot.env other than the A/B state (BOOT_ORDER, BOOT_x_LEFT). The
 * file replaces U-Boot's built-in environment, so the update agent writes these back whenever it
 * has to rebuild an environment U-Boot could not read.
 */
export function rpiUbootBaseEnv(): Record<string, string> {
  return {
    baudrate: '115200',
    // Straight to our script: skips bootstd's scan (EFI manager, extlinux) before it finds boot.scr.
    bootcmd: `load ${RPI_UBOOT_ENV.interface} ${RPI_UBOOT_ENV.devicePart} \${scriptaddr} boot.scr; source \${scriptaddr}`,
    bootdelay: '1',
    // Use the device tree and initramfs where they were loaded (U-Boot's Pi defaults).
    fdt_high: 'ffffffffffffffff',
    initrd_high: 'ffffffffffffffff',
    scriptaddr: '0x02400000',
    stderr: 'serial,vidconsole',
    stdin: 'serial',
    stdout: 'serial,vidconsole',
  };
}

/** The environment shipped in uboot.env: it replaces U-Boot's built-in one, so it is complete. */
export function initialUbootEnv(opts: RpiBootOptions): Record<string, string> {
  const order = orderedSlots(opts);
  const tries = String(opts.tries ?? 3);
  const env: Record<string, string> = { BOOT_ORDER: order.join(' '), ...rpiUbootBaseEnv() };
  // A slot that ships empty is not in BOOT_ORDER and has no tries: U-Boot never picks it.
  for (const s of opts.slots) env[counterVar(s.name)] = s.kernel ? tries : '0';
  return env;
}

/** The folder config.txt (or tryboot.txt) makes the firmware load the slot from (`os_prefix=`), or undefined. */
export function configOsPrefix(text: string): string | undefined {
  const m = /^os_prefix=(.*)$/m.exec(text.replace(/\r/g, ''));
  return m ? m[1].trim() : undefined;
}

/**
 * config.txt's text with `os_prefix=` naming another slot folder, everything else kept: how the
 * update agent turns the committed slot's config.txt into the trial's tryboot.txt and back.
 */
export function withOsPrefix(text: string, prefix: string, where = 'config.txt'): string {
  if (configOsPrefix(text) === undefined) throw new EdgekitError(`${where}: no os_prefix= line (not a tryboot boot partition)`);
  return text.replace(/^os_prefix=.*$/m, `os_prefix=${prefix}`);
}

/** The A/B script for these options (text, before wrapping in a script image). */
export function rpiAbScriptText(opts: RpiBootOptions, env = initialUbootEnv(opts)): string {
  const slots: AbSlot[] = opts.slots.map((s) => ({ name: s.name, dir: slotDir(s.name) }));
  const deviceTree = opts.deviceTree ?? ((opts.dtoverlays?.length ?? 0) + (opts.dtparams?.length ?? 0) > 0 ? 'firmware' : 'slot');
  return abBootScript({
    slots,
    tries: opts.tries ?? 3,
    envInterface: RPI_UBOOT_ENV.interface,
    envDevicePart: RPI_UBOOT_ENV.devicePart,
    envFile: RPI_UBOOT_ENV.file,
    envSize: RPI_UBOOT_ENV.size,
    persistVars: Object.keys(env).filter((k) => !k.startsWith('BOOT_')),
    initrd: hasInitrd(opts) ? 'initrd.img' : null,
    deviceTree,
    addresses: RPI_LOAD_ADDRESSES,
  });
}
