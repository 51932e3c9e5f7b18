/**
 * The simulator's Raspberry Pi firmware with tryboot: it reads config.txt, or tryboot.txt for the
 * one boot after `reboot "0 tryboot"` (the flag is cleared before anything starts, so a crash, a
 * reset or a power cut brings back config.txt), and loads the kernel, initramfs, cmdline.txt and
 * the board's device tree through `os_prefix=`. As the firmware documentation says, the prefix is
 * dropped unless both the kernel and the device tree are found under it. The firmware writes
 * nothing to the card.
 */
import { FatReader } from '../../fs/fat-reader.js';
import { startSlotKernel, type BootAttempt, type FirmwareOptions } from './kernel-start.js';
import type { SimLayout } from './layout.js';
import type { SimDisk } from './sim-disk.js';

export interface TrybootFirmwareOptions extends FirmwareOptions {
  /** The board's device tree file name (upstream_kernel=1 names, e.g. bcm2711-rpi-4-b.dtb). */
  dtb: string;
  /** The one-shot flag a `reboot "0 tryboot"` set before this power-on. */
  tryboot: boolean;
}

export interface PiConfig {
  osPrefix: string;
  kernel: string;
  initramfs?: string;
  cmdline: string;
}

/** The settings this boot chain uses from config.txt/tryboot.txt, with [all]/[none]/[tryboot] filters applied. */
export function parsePiConfig(text: string, tryboot: boolean, where: string): PiConfig {
  const c: PiConfig = { osPrefix: '', kernel: 'kernel8.img', cmdline: 'cmdline.txt' };
  let active = true;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    const section = /^\[(.*)\]$/.exec(line);
    if (section) {
      const f = section[1].trim();
      if (f === 'all') active = true;
      else if (f === 'none') active = false;
      else if (f === 'tryboot') active = tryboot;
      else throw new Error(`${where}: filter [${f}] is not simulated`);
      continue;
    }
    if (!active) continue;
    const init = /^initramfs\s+(\S+)/.exec(line);
    if (init) {
      c.initramfs = init[1];
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    if (key === 'os_prefix') c.osPrefix = value;
    else if (key === 'kernel') c.kernel = value;
    else if (key === 'cmdline') c.cmdline = value;
  }
  return c;
}

export async function trybootAttempt(disk: SimDisk, layout: SimLayout, o: TrybootFirmwareOptions): Promise<BootAttempt> {
  if (disk.unsyncedWrites) throw new Error('the firmware starts with an empty write cache');
  const fat = await FatReader.open(disk.path, layout.boot.start);
  try {
    const read = (p: string) => fat.readFile(p).catch(() => undefined);
    const configName = o.tryboot && (await read('tryboot.txt')) ? 'tryboot.txt' : 'config.txt';
    const text = await read(configName);
    if (!text) return { booted: false, reason: `no ${configName}: the firmware has nothing to boot`, stuck: true };
    const c = parsePiConfig(text.toString('utf8'), o.tryboot, configName);
    const underPrefix = c.osPrefix && (await read(c.osPrefix + c.kernel)) && (await read(c.osPrefix + o.dtb));
    const prefix = underPrefix ? c.osPrefix : '';
    const kernel = await read(prefix + c.kernel);
    const initrdMissing = c.initramfs && !(await read(prefix + c.initramfs)) ? prefix + c.initramfs : undefined;
    const cmdline = ((await read(prefix + c.cmdline)) ?? Buffer.alloc(0)).toString('utf8').trim();
    const entry = `${configName}: ${prefix || '(no prefix)'}`;
    return await startSlotKernel(disk, layout, { entry, kernelName: prefix + c.kernel, kernel, initrdMissing, cmdline }, o);
  } finally {
    await fat.close();
  }
}
