/**
 * What the Raspberry Pi firmware expects of a boot partition, per model, written from the
 * Raspberry Pi documentation (computers/configuration/boot_folder, config_txt/boot, autoboot,
 * configuration/uart, kernel command line) and from the device trees in Debian's kernel, not
 * from our board files or src/boot: the lead's integration test runs checkRpiBootPartition() on
 * built images so src/boot cannot grade itself.
 *
 * Doc facts encoded:
 * - Boot files live on the first FAT (FAT12/16/32) partition; MBR partitions are 1-4. A partition
 *   counts as bootable when it holds start.elf (Pi 0-4) or config.txt (Pi 5).
 * - bootcode.bin is the second-stage loader of the Pi 0-3 only (the Pi 4 and 5 boot from EEPROM).
 * - start.elf/fixup.dat for BCM2835-7 boards, start4.elf/fixup4.dat for the Pi 4 family; a start
 *   file and its fixup file are a matched pair. The Pi 5 needs neither.
 * - arm_64bit=1 starts the cores in AArch64; kernel= names the file to load (default kernel8.img
 *   when 64-bit). A 64-bit kernel is an uncompressed Image or a gzip of one.
 * - os_prefix is prepended to kernel, initramfs, cmdline.txt and .dtb names; directory prefixes
 *   end in '/'; the prefix is dropped unless the kernel and the DTB are found under it.
 * - upstream_kernel=1 makes the firmware prefer upstream DTB names (bcm2837-rpi-3-b.dtb, not
 *   bcm2710-rpi-3-b.dtb); device_tree= names one explicitly.
 * - enable_uart=1 (with a console= on the command line) gives the serial console on GPIO 14/15.
 * - cmdline.txt holds the kernel command line on a single line.
 * - autoboot.txt is at most 512 bytes and knows only the [all], [none] and [tryboot] sections.
 */
export type RpiModel = 'rpi3' | 'rpi4' | 'rpi5' | 'rpi-zero2w' | 'rpi-cm4';

export interface RpiBootExpectation {
  soc: 'BCM2837' | 'BCM2710A1' | 'BCM2711' | 'BCM2712';
  /** Second-stage loader on the card (Pi 0-3) or in EEPROM (Pi 4, 5). */
  bootcode: boolean;
  /** Matched start/fixup pair the firmware loads onto the VideoCore; null on the Pi 5. */
  startFile: string | null;
  fixupFile: string | null;
  /** Upstream Linux DTB names acceptable for this model (Debian's kernel ships only these). */
  dtbs: string[];
  /** The device tree's stdout-path UART as Linux names it with Debian's kernel. */
  serialConsole: string;
}

export const RPI_BOOT_TABLE: Record<RpiModel, RpiBootExpectation> = {
  rpi3: {
    soc: 'BCM2837',
    bootcode: true,
    startFile: 'start.elf',
    fixupFile: 'fixup.dat',
    dtbs: ['bcm2837-rpi-3-b.dtb', 'bcm2837-rpi-3-b-plus.dtb'],
    serialConsole: 'ttyS1', // mini UART (serial1); the PL011 drives Bluetooth
  },
  'rpi-zero2w': {
    soc: 'BCM2710A1',
    bootcode: true,
    startFile: 'start.elf',
    fixupFile: 'fixup.dat',
    dtbs: ['bcm2837-rpi-zero-2-w.dtb'],
    serialConsole: 'ttyS1',
  },
  rpi4: {
    soc: 'BCM2711',
    bootcode: false,
    startFile: 'start4.elf',
    fixupFile: 'fixup4.dat',
    dtbs: ['bcm2711-rpi-4-b.dtb', 'bcm2711-rpi-400.dtb'],
    serialConsole: 'ttyS1',
  },
  'rpi-cm4': {
    soc: 'BCM2711',
    bootcode: false,
    startFile: 'start4.elf',
    fixupFile: 'fixup4.dat',
    dtbs: ['bcm2711-rpi-cm4-io.dtb'],
    serialConsole: 'ttyS1',
  },
  rpi5: {
    soc: 'BCM2712',
    bootcode: false,
    startFile: null,
    fixupFile: null,
    dtbs: ['bcm2712-rpi-5-b.dtb'],
    serialConsole: 'ttyAMA10', // the debug UART connector (serial10)
  },
};

/** MBR partition type bytes of FAT filesystems: the firmware boots only from FAT. */
export const FAT_PARTITION_TYPES = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e];

/** Problems with a disk's first sector as the Pi boot ROM/EEPROM would see it (MBR, first partition FAT). */
export function checkRpiPartitionTable(sector0: Buffer): string[] {
  const problems: string[] = [];
  if (sector0.length < 512 || sector0[510] !== 0x55 || sector0[511] !== 0xaa) return ['sector 0: no MBR boot signature 55 AA'];
  const type = sector0[446 + 4];
  if (type === 0xee) problems.push('sector 0: protective MBR (GPT); the Pi 3 and Zero 2 W boot only from MBR');
  else if (!FAT_PARTITION_TYPES.includes(type)) problems.push(`partition 1: type 0x${type.toString(16)} is not a FAT type`);
  if (sector0.readUInt32LE(446 + 8) === 0) problems.push('partition 1: starts at LBA 0');
  return problems;
}

/** config.txt's key=value lines in the sections that apply at a normal boot ([all] and unconditional). */
export function parseConfigTxt(text: string): { values: Map<string, string>; initramfs?: string; sections: string[] } {
  const values = new Map<string, string>();
  const sections: string[] = [];
  let initramfs: string | undefined;
  let active = true;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const section = /^\[(.*)\]$/.exec(line);
    if (section) {
      sections.push(section[1]);
      active = section[1] === 'all';
      continue;
    }
    if (!active) continue;
    const m = /^initramfs\s+(\S+)/.exec(line); // the one option without '='
    if (m) {
      initramfs = m[1];
      continue;
    }
    const eq = line.indexOf('=');
    if (eq > 0) {
      const key = line.slice(0, eq).trim();
      const value = line.slice(eq + 1).trim();
      // dtoverlay/dtparam repeat; keep them all.
      values.set(key, values.has(key) && /^dt(overlay|param)$/.test(key) ? `${values.get(key)}\n${value}` : value);
    }
  }
  return { values, initramfs, sections };
}

const ARM64_IMAGE_MAGIC = 0x644d5241; // "ARM\x64" at offset 0x38 of an arm64 Image

function isArm64Kernel(buf: Buffer): boolean {
  if (buf.length > 2 && buf[0] === 0x1f && buf[1] === 0x8b) return true; // gzip of an Image
  return buf.length >= 64 && buf.readUInt32LE(0x38) === ARM64_IMAGE_MAGIC;
}

function osFile(prefix: string, name: string): string {
  // A name starting with '/' bypasses os_prefix; paths are relative to the partition root.
  return name.startsWith('/') ? name.slice(1) : prefix + name;
}

/**
 * Problems a Pi of `model` would have booting from this boot partition (paths relative to its
 * root, '/'-separated). Empty when the firmware would find everything it needs.
 */
export function checkRpiBootPartition(model: RpiModel, files: Map<string, Buffer>): string[] {
  const want = RPI_BOOT_TABLE[model];
  if (!want) return [`unknown model ${model}`];
  const problems: string[] = [];
  const has = (p: string) => files.has(p);

  if (want.bootcode && !has('bootcode.bin')) problems.push('bootcode.bin missing (second-stage loader of the Pi 0-3)');
  if (!want.bootcode && has('bootcode.bin')) problems.push(`bootcode.bin present: ${model} boots from EEPROM and does not use it`);
  if (want.startFile && !has(want.startFile)) problems.push(`${want.startFile} missing (VideoCore firmware)`);
  if (want.fixupFile && !has(want.fixupFile)) problems.push(`${want.fixupFile} missing (must match ${want.startFile})`);
  if (!has('config.txt')) {
    problems.push('config.txt missing');
    return problems;
  }
  const config = parseConfigTxt(files.get('config.txt')!.toString('utf8'));
  const v = config.values;
  if (v.get('arm_64bit') !== '1') problems.push('config.txt: arm_64bit=1 missing (Debian arm64 kernel / 64-bit U-Boot)');
  if (v.get('enable_uart') !== '1') problems.push('config.txt: enable_uart=1 missing (serial console on GPIO 14/15)');
  const deviceTree = v.get('device_tree');
  if (v.get('upstream_kernel') !== '1' && !deviceTree) {
    problems.push('config.txt: neither upstream_kernel=1 nor device_tree= (the firmware would look for downstream bcm27xx names)');
  }

  // os_prefix applies only when the kernel and a DTB are found under it; otherwise it is ignored.
  let prefix = v.get('os_prefix') ?? '';
  if (prefix && !prefix.endsWith('/') && !has(prefix + (v.get('kernel') ?? 'kernel8.img'))) {
    problems.push(`config.txt: os_prefix=${prefix} has no trailing '/' and names no file prefix`);
  }
  const kernelName = v.get('kernel') ?? 'kernel8.img';
  const dtbNames = deviceTree ? [deviceTree] : want.dtbs;
  if (prefix) {
    const viable = has(osFile(prefix, kernelName)) && dtbNames.some((d) => has(osFile(prefix, d)));
    if (!viable) {
      problems.push(`config.txt: os_prefix=${prefix} lacks ${kernelName} or the DTB: the firmware would ignore it`);
      prefix = '';
    }
  }
  const kernelPath = osFile(prefix, kernelName);
  const kernel = files.get(kernelPath);
  if (!kernel) problems.push(`kernel ${kernelPath} (config.txt kernel=) missing`);
  else if (kernel.length === 0) problems.push(`kernel ${kernelPath} is empty`);
  // U-Boot is a raw AArch64 binary; anything else named kernel= must be an arm64 Image (or its gzip).
  else if (!/u-boot/i.test(kernelName) && !isArm64Kernel(kernel)) problems.push(`kernel ${kernelPath}: not an arm64 Image`);

  if (!dtbNames.some((d) => has(osFile(prefix, d)))) {
    problems.push(`device tree missing: none of ${dtbNames.map((d) => osFile(prefix, d)).join(', ')}`);
  }
  if (deviceTree && !want.dtbs.includes(deviceTree)) problems.push(`config.txt: device_tree=${deviceTree} is not a ${model} tree (${want.dtbs.join(', ')})`);

  if (config.initramfs && !has(osFile(prefix, config.initramfs))) problems.push(`initramfs ${osFile(prefix, config.initramfs)} missing`);
  for (const o of (v.get('dtoverlay') ?? '').split('\n').filter(Boolean)) {
    const name = o.split(',')[0];
    if (!has(`overlays/${name}.dtbo`) && !has(osFile(prefix, `overlays/${name}.dtbo`))) problems.push(`dtoverlay=${name}: overlays/${name}.dtbo missing`);
  }

  // Kernels loaded after the firmware (U-Boot's slots) must be arm64 Images as well.
  for (const [path, data] of files) {
    if (/(^|\/)vmlinuz$/.test(path) && path !== kernelPath && !isArm64Kernel(data)) problems.push(`${path}: not an arm64 Image`);
  }
  // Every cmdline.txt on the partition (the firmware's and each slot's) must be one line.
  for (const [path, data] of files) {
    if (path !== 'cmdline.txt' && !path.endsWith('/cmdline.txt')) continue;
    const text = data.toString('utf8').replace(/\r?\n$/, '');
    if (text.trim() === '') problems.push(`${path}: empty`);
    if (/[\r\n]/.test(text)) problems.push(`${path}: more than one line`);
  }
  const autoboot = files.get('autoboot.txt');
  if (autoboot) {
    if (autoboot.length > 512) problems.push(`autoboot.txt: ${autoboot.length} bytes, the firmware reads at most 512`);
    for (const s of parseConfigTxt(autoboot.toString('utf8')).sections) {
      if (!['all', 'none', 'tryboot'].includes(s)) problems.push(`autoboot.txt: section [${s}] is not supported there`);
    }
  }
  return problems;
}
