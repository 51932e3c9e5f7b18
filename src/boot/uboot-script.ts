/**
 * The A/B slot chooser as a U-Boot hush script (RAUC bootchooser style).
 *
 * State lives in U-Boot's environment file: BOOT_ORDER ("A B": try A first) and one try counter
 * per slot (BOOT_A_LEFT, BOOT_B_LEFT). Each boot the script takes the first slot in BOOT_ORDER
 * whose counter is above zero, spends one try, writes the environment back, then boots that slot.
 * The running system blesses a good boot by resetting its counter; it switches slots by rewriting
 * BOOT_ORDER. A slot that keeps failing runs out of tries and the next slot in BOOT_ORDER boots.
 *
 * Only the named variables are written back (`env export -c` + `fatwrite`, the same block
 * `saveenv` writes): a plain `saveenv` would also persist what U-Boot sets at run time from the
 * board it runs on (fdt_addr, fdtfile, ethaddr, serial#), which would then stick to the card.
 */
import { EdgekitError } from '../util/errors.js';

export interface AbSlot {
  /** 'A' or 'B': the name used in BOOT_ORDER and in BOOT_<name>_LEFT. */
  name: string;
  /** Folder on the boot partition holding this slot's kernel, initramfs, cmdline.txt and DTBs. */
  dir: string;
}

/**
 * Load addresses. The defaults avoid what the Raspberry Pi U-Boot uses: its `scriptaddr`
 * (0x02400000, where this script runs from), the device tree a firmware placed (QEMU puts it at
 * 0x08000000, the Pi firmware near the top of RAM) and U-Boot itself (relocated to the top).
 * U-Boot's own kernel_addr_r (0x80000) leaves 35 MiB before scriptaddr: too little for Debian's
 * uncompressed arm64 Image (~37 MiB, ~39 MiB with BSS).
 */
export interface AbLoadAddresses {
  kernel: number; // 2 MiB aligned, so booti runs the Image in place
  fdt: number;
  cmdline: number;
  env: number;
  ramdisk: number;
}

export const RPI_LOAD_ADDRESSES: AbLoadAddresses = {
  kernel: 0x02a00000, // up to 0x06000000: 54 MiB of kernel image + BSS
  fdt: 0x06000000, // 1 MiB
  cmdline: 0x06100000,
  env: 0x06200000,
  ramdisk: 0x09000000, // past a firmware DT at 0x08000000; a 256 MiB initramfs still ends below 0x19000000
};

export interface AbScriptOptions {
  slots: AbSlot[];
  /** Tries a slot gets before the next one in BOOT_ORDER is used: 1..9 (setexpr works in hex). */
  tries: number;
  /** Where U-Boot keeps its environment: interface and device:partition (CONFIG_ENV_FAT_*). */
  envInterface: string;
  envDevicePart: string;
  envFile: string;
  envSize: number;
  /** Variables written back with the counters: the rest of the shipped environment. */
  persistVars: string[];
  /** File names inside each slot folder; no initrd: boot without an initramfs. */
  kernel?: string;
  initrd?: string | null;
  cmdline?: string;
  /** The slot's own DTB (slot folder + U-Boot's ${fdtfile}), or the firmware's (${fdt_addr}). */
  deviceTree?: 'slot' | 'firmware';
  addresses?: AbLoadAddresses;
}

const SLOT_NAME = /^[A-Z]$/;
const hex = (n: number) => '0x' + n.toString(16).padStart(8, '0');

export function counterVar(slot: string): string {
  return `BOOT_${slot}_LEFT`;
}

/** The hush script text; wrap it with buildUbootScript() to get boot.scr. */
export function abBootScript(opts: AbScriptOptions): string {
  if (opts.slots.length < 1) throw new EdgekitError('A/B boot script: no slots');
  for (const s of opts.slots) {
    if (!SLOT_NAME.test(s.name)) throw new EdgekitError(`A/B boot script: slot name ${JSON.stringify(s.name)} is not one capital letter`);
    if (!/^[A-Za-z0-9._/-]+$/.test(s.dir)) throw new EdgekitError(`A/B boot script: slot folder ${JSON.stringify(s.dir)} has characters U-Boot's FAT paths cannot take`);
  }
  if (!Number.isInteger(opts.tries) || opts.tries < 1 || opts.tries > 9) {
    throw new EdgekitError(`A/B boot script: tries must be 1..9, got ${opts.tries}`);
  }
  const a = opts.addresses ?? RPI_LOAD_ADDRESSES;
  const dev = `${opts.envInterface} ${opts.envDevicePart}`;
  const kernel = opts.kernel ?? 'vmlinuz';
  const initrd = opts.initrd === undefined ? 'initrd.img' : opts.initrd;
  const cmdline = opts.cmdline ?? 'cmdline.txt';
  const order = opts.slots.map((s) => s.name).join(' ');
  const counters = opts.slots.map((s) => counterVar(s.name));
  const persist = [...new Set(['BOOT_ORDER', ...counters, ...opts.persistVars])].sort();
  const save = [
    `env export -c -s ${hex(opts.envSize)} ${hex(a.env)} ${persist.join(' ')}`,
    `fatwrite ${dev} ${hex(a.env)} ${opts.envFile} ${hex(opts.envSize)}`,
  ];

  const lines: string[] = [
    '# edgekit A/B boot: pick the first slot in BOOT_ORDER with tries left, spend one, save, boot it.',
    '# A missing or unreadable environment starts over with every slot at full tries.',
    `test -n "\${BOOT_ORDER}" || setenv BOOT_ORDER "${order}"`,
    ...counters.map((c) => `test -n "\${${c}}" || setenv ${c} ${opts.tries}`),
    'setenv ab_slot',
    'for s in ${BOOT_ORDER}; do',
    '  if test -z "${ab_slot}"; then',
  ];
  for (const s of opts.slots) {
    const c = counterVar(s.name);
    lines.push(
      `    if test "\${s}" = "${s.name}"; then`,
      `      if test \${${c}} -gt 0; then`,
      `        setexpr ${c} \${${c}} - 1`,
      `        setenv ab_slot ${s.name}`,
      `        setenv ab_dir ${s.dir}`,
      '      fi',
      '    fi',
    );
  }
  lines.push(
    '  fi',
    'done',
    'if test -z "${ab_slot}"; then',
    '  echo "edgekit: no slot has tries left; resetting the counters and restarting"',
    ...counters.map((c) => `  setenv ${c} ${opts.tries}`),
    ...save.map((l) => '  ' + l),
    '  reset',
    'fi',
    ...save,
    `echo "edgekit: booting slot \${ab_slot} (tries left:${counters.map((c) => ` ${c}=\${${c}}`).join('')})"`,
    `load ${dev} ${hex(a.kernel)} \${ab_dir}/${kernel}`,
    ...(initrd
      ? [`load ${dev} ${hex(a.ramdisk)} \${ab_dir}/${initrd}`, `setenv ab_initrd ${hex(a.ramdisk)}:\${filesize}`]
      : ['setenv ab_initrd -']),
    '# cmdline.txt is the slot\'s kernel command line on one line; NUL-terminate it and read it as a string.',
    `load ${dev} ${hex(a.cmdline)} \${ab_dir}/${cmdline}`,
    `setexpr ab_end ${hex(a.cmdline)} + \${filesize}`,
    'mw.b ${ab_end} 0 1',
    `setexpr.s ab_args *${hex(a.cmdline)}`,
    'setenv bootargs "${ab_args} edgekit.slot=${ab_slot}"',
    ...((opts.deviceTree ?? 'slot') === 'slot'
      ? [
          '# The slot\'s own DTB (${fdtfile} is the upstream name U-Boot picked for this board);',
          '# without one, the device tree the firmware loaded from the partition root.',
          `if load ${dev} ${hex(a.fdt)} \${ab_dir}/\${fdtfile}; then setenv ab_fdt ${hex(a.fdt)}; else setenv ab_fdt \${fdt_addr}; fi`,
        ]
      : ['# The device tree the firmware loaded and patched (dtoverlay=, dtparam= in config.txt).', 'setenv ab_fdt ${fdt_addr}']),
    'booti ' + hex(a.kernel) + ' ${ab_initrd} ${ab_fdt}',
    'echo "edgekit: slot ${ab_slot} did not start; restarting to try again"',
    'reset',
    '',
  );
  return lines.join('\n');
}
