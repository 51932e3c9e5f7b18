/**
 * The simulator's U-Boot for Raspberry Pi boards: it loads uboot.env from the FAT boot partition
 * (falling back to U-Boot's built-in environment when the file is missing or fails its CRC, as
 * U-Boot does), then runs `bootcmd` through the hush subset in uboot-shell.ts. The shipped
 * bootcmd loads and sources boot.scr; the built-in one (`bootflow scan`) finds boot.scr the way
 * bootstd's script method does. So every decision (which slot, which counter to spend, when to
 * start the counters over) is the builder's own boot script, read off the simulated disk.
 *
 * Board commands, as U-Boot does them: `load` reads a file into simulated RAM and sets
 * `filesize`; `env export -c` makes the CRC'd block (src/boot/uboot.ts); `fatwrite` overwrites an
 * existing file where it is (same clusters: a cut tears it, and the CRC catches that on the next
 * boot); `booti` starts the kernel loaded at its address (startSlotKernel checks it); `reset`
 * ends the attempt. Writes go through the power-cuttable disk like everything else.
 */
import { RPI_UBOOT_ENV } from '../../boot/rpi.js';
import { buildUbootEnv, parseUbootEnv, parseUbootScript } from '../../boot/uboot.js';
import { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { startSlotKernel, type BootAttempt, type FirmwareOptions } from './kernel-start.js';
import type { SimLayout } from './layout.js';
import type { SimDisk } from './sim-disk.js';
import { hexArg, ShellExit, SimMemory, UbootShell, type ShellCommand } from './uboot-shell.js';

/**
 * The built-in environment of Debian's u-boot-rpi 2025.01 (rpi_arm64), as its u-boot.bin carries
 * it: what U-Boot boots with when uboot.env cannot be used. What matters to the A/B chain: no
 * BOOT_ variables, and a bootcmd that finds boot.scr on its own.
 */
export const UBOOT_RPI_BUILTIN_ENV: Readonly<Record<string, string>> = {
  arch: 'arm',
  baudrate: '115200',
  board: 'rpi',
  board_name: 'rpi',
  boot_targets: 'mmc usb pxe dhcp',
  bootcmd: 'bootflow scan',
  bootdelay: '2',
  cpu: 'armv8',
  dhcpuboot: 'usb start; dhcp u-boot.uimg; bootm',
  fdt_addr_r: '0x02600000',
  fdt_high: 'ffffffffffffffff',
  initrd_high: 'ffffffffffffffff',
  kernel_addr_r: '0x00080000',
  loadaddr: '0x1000000',
  preboot: 'pci enum; usb start;',
  pxefile_addr_r: '0x02500000',
  ramdisk_addr_r: '0x02700000',
  scriptaddr: '0x02400000',
  soc: 'bcm283x',
  stderr: 'serial,vidconsole',
  stdin: 'serial,usbkbd',
  stdout: 'serial,vidconsole',
  usb_ignorelist: '0x1050:*,',
  vendor: 'raspberrypi',
};

/** Where the Pi firmware leaves its device tree for U-Boot (${fdt_addr}): clear of every address boot.scr loads to. */
const FIRMWARE_FDT_ADDR = '2eff2e00';

export interface UbootFirmwareOptions extends FirmwareOptions {
  /** The device tree name U-Boot's board code puts in ${fdtfile} (RPI_MODELS[model].ubootFdtfile). */
  fdtfile: string;
  /** Where U-Boot keeps its environment; default the Raspberry Pi builds' (RPI_UBOOT_ENV). */
  env?: { interface: string; devicePart: string; file: string; size: number };
  builtinEnv?: Record<string, string>;
}

export type UbootAttempt = BootAttempt & { console: string[]; envSource: 'file' | 'built-in' };

/** One power-on: firmware -> U-Boot -> bootcmd -> boot.scr -> a kernel that starts, or a reset. */
export async function ubootAttempt(disk: SimDisk, layout: SimLayout, o: UbootFirmwareOptions): Promise<UbootAttempt> {
  if (disk.unsyncedWrites) throw new Error('the firmware starts with an empty write cache');
  const envAt = o.env ?? RPI_UBOOT_ENV;
  const vol = await FatVolume.open(disk, layout.boot.start);
  const memory = new SimMemory();
  const loadedFrom = new Map<number, string>();

  let stored: Record<string, string> | undefined;
  const file = await vol.readFile(envAt.file).catch(() => undefined);
  if (file && file.length === envAt.size) {
    try {
      stored = parseUbootEnv(file).vars;
    } catch (err) {
      if (!(err instanceof EdgekitError)) throw err;
    }
  }
  const envSource = stored ? 'file' : 'built-in';
  // What the board code adds at run time when the environment lacks it (never saved: the script
  // exports only its own variables).
  const env: Record<string, string> = { fdt_addr: FIRMWARE_FDT_ADDR, fdtfile: o.fdtfile, ...(stored ?? o.builtinEnv ?? UBOOT_RPI_BUILTIN_ENV) };

  const device = (iface: string, devPart: string) => iface === envAt.interface && devPart === envAt.devicePart;
  const fatPath = (p: string) => p.replace(/^\/+/, '');
  const loadFile = async (path: string, addr: number, sh: UbootShell): Promise<number> => {
    const data = await vol.readFile(fatPath(path)).catch(() => undefined);
    if (!data) {
      sh.log(`** File not found ${path} **`);
      return 1;
    }
    memory.write(addr, data);
    loadedFrom.set(addr, fatPath(path));
    sh.env.filesize = data.length.toString(16);
    return 0;
  };
  const source = async (addr: number, sh: UbootShell): Promise<number> => {
    const header = memory.read(addr, 64);
    const script = parseUbootScript(memory.read(addr, 64 + header.readUInt32BE(12)));
    return sh.run(script);
  };

  const commands: Record<string, ShellCommand> = {
    async load(args, sh) {
      if (args.length !== 4) throw new Error(`simulated U-Boot: load ${args.join(' ')}: only "load <if> <dev:part> <addr> <file>" is simulated`);
      if (!device(args[0], args[1])) {
        sh.log(`** Bad device ${args[0]} ${args[1]} **`);
        return 1;
      }
      return loadFile(args[3], hexArg(args[2], 'load address'), sh);
    },
    source: (args, sh) => source(hexArg(args[0] ?? sh.env.loadaddr ?? '', 'source address'), sh),
    async bootflow(args, sh) {
      if (args[0] !== 'scan') throw new Error(`simulated U-Boot: bootflow ${args.join(' ')} is not simulated`);
      // bootstd's script method on the SD card's boot partition: boot.scr.uimg or boot.scr, in / then /boot/.
      const scriptAddr = hexArg(sh.env.scriptaddr ?? '', 'scriptaddr');
      for (const prefix of ['/', '/boot/']) {
        for (const name of ['boot.scr.uimg', 'boot.scr']) {
          if (!(await vol.stat(fatPath(prefix + name)))) continue;
          Object.assign(sh.env, { devtype: 'mmc', devnum: '0', distro_bootpart: '1', prefix });
          await loadFile(prefix + name, scriptAddr, sh);
          return source(scriptAddr, sh);
        }
      }
      sh.log('No bootflows found');
      return 1;
    },
    env(args, sh) {
      const m = args.length >= 5 && args[0] === 'export' && args[1] === '-c' && args[2] === '-s';
      if (!m) throw new Error(`simulated U-Boot: env ${args.join(' ')}: only "env export -c -s <size> <addr> [vars]" is simulated`);
      const size = hexArg(args[3], 'env export size');
      const names = args.slice(5);
      const vars: Record<string, string> = {};
      for (const [k, v] of Object.entries(sh.env)) if (names.length === 0 || names.includes(k)) vars[k] = v;
      memory.write(hexArg(args[4], 'env export address'), buildUbootEnv(vars, { size }));
      return 0;
    },
    async fatwrite(args, sh) {
      if (args.length !== 5) throw new Error(`simulated U-Boot: fatwrite ${args.join(' ')}: only "fatwrite <if> <dev:part> <addr> <file> <size>" is simulated`);
      if (!device(args[0], args[1])) return 1;
      const data = memory.read(hexArg(args[2], 'fatwrite address'), hexArg(args[4], 'fatwrite size'));
      const path = fatPath(args[3]);
      // U-Boot writes an existing file's new contents over its old clusters: not atomic.
      const existing = await vol.stat(path);
      if (existing && !existing.isDir && existing.size === data.length) await vol.rewriteInPlace(path, data);
      else await vol.writeFile(path, data);
      sh.log(`${data.length} bytes written`);
      return 0;
    },
    mw(args) {
      if (args[0] !== 'mw.b') throw new Error(`simulated U-Boot: ${args[0]} is not simulated`);
      const count = args[3] === undefined ? 1 : hexArg(args[3], 'mw.b count');
      memory.write(hexArg(args[1], 'mw.b address'), Buffer.alloc(count, hexArg(args[2], 'mw.b value')));
      return 0;
    },
    booti(args, sh) {
      const kernelAddr = hexArg(args[0] ?? sh.env.kernel_addr_r ?? '', 'booti kernel address');
      if (!memory.loadedAt(kernelAddr)) {
        sh.log('Bad Linux ARM64 Image magic!');
        return 1;
      }
      throw new ShellExit('boot', { kernelAddr, initrd: args[1] ?? '-' });
    },
    reset() {
      throw new ShellExit('reset');
    },
  };

  const sh = new UbootShell(env, memory, commands);
  const lastBootLine = () => [...sh.console].reverse().find((l) => l.startsWith('edgekit: booting slot'));
  const done = (a: BootAttempt): UbootAttempt => ({ ...a, console: sh.console, envSource });
  if (env.bootcmd === undefined) return done({ booted: false, reason: 'no bootcmd: U-Boot waits at its prompt', stuck: true });
  try {
    await sh.run(env.bootcmd);
  } catch (err) {
    if (!(err instanceof ShellExit)) throw err;
    if (err.how === 'reset') return done({ booted: false, entry: lastBootLine(), reason: 'the boot script reset the board' });
    const kernel = memory.loadedAt(err.detail.kernelAddr as number);
    const initrdArg = err.detail.initrd as string;
    let initrdMissing: string | undefined;
    if (initrdArg !== '-') {
      const [addr, size] = initrdArg.split(':');
      const loaded = memory.loadedAt(hexArg(addr, 'initrd address'));
      if (!loaded || (size !== undefined && loaded.length !== hexArg(size, 'initrd size'))) initrdMissing = initrdArg;
    }
    const entry = lastBootLine() ?? 'bootcmd';
    return done(await startSlotKernel(disk, layout, { entry, kernelName: loadedFrom.get(err.detail.kernelAddr as number) ?? 'kernel', kernel, initrdMissing, cmdline: sh.env.bootargs ?? '' }, o));
  }
  return done({ booted: false, entry: lastBootLine(), reason: 'bootcmd ended without booting: U-Boot waits at its prompt', stuck: true });
}
