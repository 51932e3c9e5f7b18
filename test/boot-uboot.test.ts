/**
 * U-Boot environment and script images checked with u-boot-tools (mkimage, dumpimage,
 * fw_printenv, fw_setenv); Raspberry Pi boot partitions checked against the table written from
 * the Pi documentation; and the A/B chooser run for real: U-Boot from Debian's u-boot-rpi under
 * QEMU's raspi3b, booting Debian's arm64 kernel, counting tries in uboot.env on the SD image.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { buildUbootEnv, buildUbootScript, parseUbootEnv, parseUbootScript } from '../src/boot/uboot.js';
import { abBootScript } from '../src/boot/uboot-script.js';
import { RPI_MODELS, RPI_UBOOT_ENV, rpiBootFiles, type RpiBootFile, type RpiBootOptions, type RpiModel } from '../src/boot/rpi.js';
import { checkRpiBootPartition, checkRpiPartitionTable, parseConfigTxt, RPI_BOOT_TABLE } from './rpi-boot-table.js';
import { ensureRpiDevFiles, type RpiDevFiles } from './helpers/rpi-debs.js';
import { buildRpiSdImage, fsckBootPartition, readBootFile, readBootPartition, writeBootFile } from './helpers/rpi-sdimage.js';
import { runRaspi3b } from './helpers/rpi-qemu.js';

function sh(cmd: string, args: string[], input?: string | Buffer) {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C', SOURCE_DATE_EPOCH: '1700000000' } });
  if (r.error) throw r.error;
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'edgekit-boot-uboot-'));
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** fw_printenv/fw_setenv on a plain file: "<file> <offset> <size>" (one line per copy). */
function fwConfig(files: string[], size: number): string {
  const cfg = join(tmp, `fw-${files.length}-${Math.abs(hashOf(files.join()))}.config`);
  writeFileSync(cfg, files.map((f) => `${f} 0x0 0x${size.toString(16)}\n`).join(''));
  return cfg;
}
function hashOf(s: string): number {
  let h = 0;
  for (const c of s) h = (h * 31 + c.charCodeAt(0)) | 0;
  return h;
}
function fwPrintenv(cfg: string): Record<string, string> {
  const r = sh('fw_printenv', ['-c', cfg]);
  expect(r.status, r.out).toBe(0);
  return Object.fromEntries(r.out.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

describe('U-Boot environment (uboot.env)', () => {
  const vars = { BOOT_ORDER: 'A B', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3', bootcmd: 'load mmc 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}', zeta: 'x=y' };

  test('fw_printenv reads what we write, and we read what fw_setenv writes', () => {
    const file = join(tmp, 'uboot.env');
    writeFileSync(file, buildUbootEnv(vars, { size: RPI_UBOOT_ENV.size }));
    const cfg = fwConfig([file], RPI_UBOOT_ENV.size);
    expect(fwPrintenv(cfg)).toEqual(vars);

    expect(sh('fw_setenv', ['-c', cfg, 'BOOT_ORDER', 'B A']).status).toBe(0);
    expect(sh('fw_setenv', ['-c', cfg, 'BOOT_B_LEFT']).status).toBe(0); // deletes it
    const after = readFileSync(file);
    expect(after.length).toBe(RPI_UBOOT_ENV.size);
    const { BOOT_B_LEFT: _gone, ...rest } = vars;
    expect(parseUbootEnv(after).vars).toEqual({ ...rest, BOOT_ORDER: 'B A' });
  });

  test('redundant layout (CRC, flags byte) is read by fw_printenv with two copies', () => {
    const a = join(tmp, 'env-a');
    const b = join(tmp, 'env-b');
    writeFileSync(a, buildUbootEnv({ x: 'old' }, { size: 0x2000, redundant: true, flags: 1 }));
    writeFileSync(b, buildUbootEnv({ x: 'new' }, { size: 0x2000, redundant: true, flags: 2 }));
    expect(fwPrintenv(fwConfig([a, b], 0x2000))).toEqual({ x: 'new' });
    expect(parseUbootEnv(readFileSync(b), { redundant: true })).toEqual({ vars: { x: 'new' }, flags: 2 });
  });

  test('a damaged block is rejected by us and by fw_printenv', () => {
    const file = join(tmp, 'bad.env');
    const buf = buildUbootEnv(vars, { size: 0x4000 });
    buf[20] ^= 0xff;
    writeFileSync(file, buf);
    expect(() => parseUbootEnv(buf)).toThrow(/CRC mismatch/);
    expect(sh('fw_printenv', ['-c', fwConfig([file], 0x4000)]).out).toMatch(/Bad CRC|default environment/i);
  });

  test('names and sizes U-Boot cannot store are refused', () => {
    expect(() => buildUbootEnv({ 'a=b': '1' }, { size: 0x4000 })).toThrow(/bad variable name/);
    expect(() => buildUbootEnv({ a: 'x'.repeat(0x4000) }, { size: 0x4000 })).toThrow(/do not fit/);
  });
});

describe('U-Boot script image (boot.scr)', () => {
  const text = 'echo hello\nsetenv a "b c"\n';

  test('byte-identical to mkimage -A arm64 -T script with the same SOURCE_DATE_EPOCH', () => {
    const src = join(tmp, 's.txt');
    const ref = join(tmp, 's.mkimage');
    writeFileSync(src, text);
    const r = sh('mkimage', ['-A', 'arm64', '-O', 'linux', '-T', 'script', '-C', 'none', '-n', 'edgekit', '-d', src, ref]);
    expect(r.status, r.out).toBe(0);
    const ours = buildUbootScript(text, { name: 'edgekit', arch: 'arm64', timestamp: 1700000000 });
    expect(ours.equals(readFileSync(ref))).toBe(true);
  });

  test('mkimage -l lists it as a script; dumpimage gets the text back', () => {
    const img = join(tmp, 'boot.scr');
    writeFileSync(img, buildUbootScript(text, { name: 'edgekit A/B' }));
    const l = sh('mkimage', ['-l', img]);
    expect(l.status, l.out).toBe(0);
    expect(l.out).toMatch(/Image Name:\s+edgekit A\/B/);
    expect(l.out).toMatch(/Image Type:\s+AArch64 Linux Script/);
    const out = join(tmp, 'dumped.txt');
    const d = sh('dumpimage', ['-T', 'script', '-p', '0', '-o', out, img]);
    expect(d.status, d.out).toBe(0);
    // dumpimage -T script hands back the whole data area: the size table (length, 0), then the text.
    const data = readFileSync(out);
    expect(data.readUInt32BE(0)).toBe(Buffer.byteLength(text));
    expect(data.readUInt32BE(4)).toBe(0);
    expect(data.subarray(8).toString('utf8')).toBe(text);
    expect(parseUbootScript(readFileSync(img))).toBe(text);
  });

  test('the A/B script refuses what its hush arithmetic cannot do', () => {
    const base = { slots: [{ name: 'A', dir: 'slot-a' }], envInterface: 'mmc', envDevicePart: '0:1', envFile: 'uboot.env', envSize: 0x4000, persistVars: [] };
    expect(() => abBootScript({ ...base, tries: 10 })).toThrow(/1\.\.9/);
    expect(() => abBootScript({ ...base, tries: 3, slots: [{ name: 'a', dir: 'slot-a' }] })).toThrow(/capital/);
  });
});

// ---- Raspberry Pi boot partitions against the documentation table -------------------------------

const ARM64_IMAGE = (() => {
  const b = Buffer.alloc(4096);
  b.write('ARM\x64', 0x38, 'latin1');
  return b;
})();

function fakeInputs(dir: string, model: RpiModel): RpiBootOptions {
  const fw = join(dir, 'firmware');
  mkdirSync(join(fw, 'overlays'), { recursive: true });
  for (const f of ['bootcode.bin', 'start.elf', 'fixup.dat', 'start4.elf', 'fixup4.dat', 'overlays/disable-bt.dtbo']) writeFileSync(join(fw, f), `fw ${f}`);
  writeFileSync(join(dir, 'u-boot.bin'), Buffer.from([0x0a, 0x00, 0x00, 0x14]));
  writeFileSync(join(dir, 'vmlinuz'), ARM64_IMAGE);
  writeFileSync(join(dir, 'initrd.img'), 'initrd');
  writeFileSync(join(dir, 'board.dtb'), 'dtb');
  const dtb = RPI_MODELS[model].kernelDtb;
  const slot = (name: string) => ({ name, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), cmdline: 'console=ttyS1,115200 root=/dev/mmcblk0p2', dtbs: { [dtb]: join(dir, 'board.dtb') } });
  return { model, firmwareDir: fw, ubootBin: join(dir, 'u-boot.bin'), dtbs: { [dtb]: join(dir, 'board.dtb') }, slots: [slot('A'), slot('B')], sourceDateEpoch: 1700000000 };
}

function asMap(files: RpiBootFile[]): Map<string, Buffer> {
  return new Map(files.map((f) => [f.path, f.data ?? readFileSync(f.file!)]));
}

describe('Raspberry Pi boot files meet the documented firmware expectations', () => {
  const models = Object.keys(RPI_BOOT_TABLE) as RpiModel[];

  test.each(models)('%s, U-Boot loader', (model) => {
    const files = rpiBootFiles(fakeInputs(join(tmp, `m-${model}`), model));
    const map = asMap(files);
    expect(checkRpiBootPartition(model, map)).toEqual([]);
    // The environment file is the one the rpi U-Boot builds load, and fw_printenv reads it.
    const envFile = join(tmp, `env-${model}`);
    writeFileSync(envFile, map.get(RPI_UBOOT_ENV.file)!);
    expect(fwPrintenv(fwConfig([envFile], RPI_UBOOT_ENV.size))).toMatchObject({ BOOT_ORDER: 'A B', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' });
    writeFileSync(join(tmp, `scr-${model}`), map.get('boot.scr')!);
    expect(sh('mkimage', ['-l', join(tmp, `scr-${model}`)]).out).toMatch(/AArch64 Linux Script/);
  });

  test.each(models)('%s, firmware tryboot loader', (model) => {
    const opts = { ...fakeInputs(join(tmp, `t-${model}`), model), loader: 'tryboot' as const };
    const map = asMap(rpiBootFiles(opts));
    expect(checkRpiBootPartition(model, map)).toEqual([]);
    // tryboot.txt is what the firmware reads instead for one boot: it must boot the other slot.
    const tryboot = { ...Object.fromEntries(map), 'config.txt': map.get('tryboot.txt')! };
    expect(checkRpiBootPartition(model, new Map(Object.entries(tryboot)))).toEqual([]);
    expect(parseConfigTxt(map.get('config.txt')!.toString()).values.get('os_prefix')).toBe('slot-a/');
    expect(parseConfigTxt(map.get('tryboot.txt')!.toString()).values.get('os_prefix')).toBe('slot-b/');
  });

  test('the checker catches what each model would miss', () => {
    const pi3 = asMap(rpiBootFiles(fakeInputs(join(tmp, 'n3'), 'rpi3')));
    pi3.delete('bootcode.bin');
    expect(checkRpiBootPartition('rpi3', pi3).join('\n')).toMatch(/bootcode\.bin missing/);
    // A Pi 3 partition handed to a Pi 4: wrong start file, wrong DTB, a bootcode.bin it ignores.
    const wrong = checkRpiBootPartition('rpi4', asMap(rpiBootFiles(fakeInputs(join(tmp, 'n4'), 'rpi3')))).join('\n');
    expect(wrong).toMatch(/start4\.elf missing/);
    expect(wrong).toMatch(/device tree missing/);
    const noUart = asMap(rpiBootFiles({ ...fakeInputs(join(tmp, 'n5'), 'rpi5'), consoleUart: false }));
    expect(checkRpiBootPartition('rpi5', noUart).join('\n')).toMatch(/enable_uart/);
    const badKernel = asMap(rpiBootFiles({ ...fakeInputs(join(tmp, 'n6'), 'rpi4'), loader: 'tryboot' }));
    badKernel.set('slot-a/vmlinuz', Buffer.from('not a kernel'));
    expect(checkRpiBootPartition('rpi4', badKernel).join('\n')).toMatch(/not an arm64 Image/);
  });

  test('output depends only on the options', () => {
    const a = rpiBootFiles(fakeInputs(join(tmp, 'd1'), 'rpi4'));
    const b = rpiBootFiles(fakeInputs(join(tmp, 'd1'), 'rpi4'));
    expect(a).toEqual(b);
    expect(a.map((f) => f.path)).toEqual([...a.map((f) => f.path)].sort());
  });

  test('dtoverlays are copied from the firmware and hand the kernel the firmware device tree', () => {
    const files = rpiBootFiles({ ...fakeInputs(join(tmp, 'ov'), 'rpi3'), dtoverlays: ['disable-bt'] });
    const map = asMap(files);
    expect(map.has('overlays/disable-bt.dtbo')).toBe(true);
    expect(parseConfigTxt(map.get('config.txt')!.toString()).values.get('dtoverlay')).toBe('disable-bt');
    expect(parseUbootScript(map.get('boot.scr')!)).toMatch(/setenv ab_fdt \$\{fdt_addr\}\n/);
    expect(checkRpiBootPartition('rpi3', map)).toEqual([]);
  });
});

// ---- A/B under QEMU raspi3b: real U-Boot, real kernel, counters in uboot.env on the SD image ----

// The whole marker line, so a run stops only once the command line has been printed too.
const MARKER = /EDGEKIT-SLOT-MARKER slot=([AB]) cmdline=([^\r\n]*)[\r\n]/;
const SLOT_FAILED = /edgekit: slot B did not start/;

function markerInitramfs(dir: string, busybox: string, slot: string): string {
  const root = join(dir, `initramfs-${slot}`);
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'proc'));
  copyFileSync(busybox, join(root, 'bin/busybox'));
  chmodSync(join(root, 'bin/busybox'), 0o755);
  writeFileSync(
    join(root, 'init'),
    ['#!/bin/busybox sh', '/bin/busybox mount -t proc proc /proc', `echo "EDGEKIT-SLOT-MARKER slot=${slot} cmdline=$(/bin/busybox cat /proc/cmdline)"`, '/bin/busybox poweroff -f', ''].join('\n'),
  );
  chmodSync(join(root, 'init'), 0o755);
  const out = join(dir, `initrd-${slot}.img`);
  const r = spawnSync('sh', ['-c', 'cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -n > "$2"', 'sh', root, out]);
  if (r.status !== 0) throw new Error(`cpio: ${r.stderr}`);
  return out;
}

const dev = ensureRpiDevFiles();
const devMissing = typeof dev === 'string' ? dev : undefined;
if (devMissing) console.warn(`skipping the raspi3b A/B boot test: ${devMissing}`);

describe.skipIf(devMissing !== undefined)('A/B boot under QEMU raspi3b (U-Boot 2025.01, Debian arm64 kernel)', () => {
  const files = dev as RpiDevFiles;
  let image: string;
  let dtb: string;
  const envCfg = () => fwConfig([join(tmp, 'sd-uboot.env')], RPI_UBOOT_ENV.size);
  /** The env as the update agent would see it: fw_printenv on the file U-Boot wrote on the card. */
  const cardEnv = () => {
    writeFileSync(join(tmp, 'sd-uboot.env'), readBootFile(image, RPI_UBOOT_ENV.file));
    return fwPrintenv(envCfg());
  };
  const readBootFileTo = (p: string) => {
    const out = join(tmp, `from-card-${p.replace(/\//g, '_')}`);
    writeFileSync(out, readBootFile(image, p));
    return out;
  };
  // Everything QEMU needs comes from the card: U-Boot, and the DTB the firmware would have loaded.
  const powerCycle = () => runRaspi3b({ image, ubootBin: readBootFileTo('u-boot.bin'), dtb: readBootFileTo('bcm2837-rpi-3-b.dtb'), stopAt: MARKER });
  const setCardEnv = (vars: Array<[string, string]>) => {
    const envFile = join(tmp, 'sd-uboot.env');
    writeFileSync(envFile, readBootFile(image, RPI_UBOOT_ENV.file));
    for (const [k, v] of vars) expect(sh('fw_setenv', ['-c', envCfg(), k, v]).status).toBe(0);
    writeBootFile(image, RPI_UBOOT_ENV.file, readFileSync(envFile));
  };
  // Each test is one or more QEMU power cycles on a shared, emulated SD card: slow, not timed.
  const QEMU_TEST_TIMEOUT = 30 * 60_000;

  beforeAll(() => {
    const work = join(tmp, 'qemu');
    mkdirSync(work);
    dtb = join(files.dtbDir, 'broadcom/bcm2837-rpi-3-b.dtb');
    const brokenKernel = join(work, 'broken-vmlinuz');
    writeFileSync(brokenKernel, 'this is not a kernel\n');
    const boardDtbs = { 'broadcom/bcm2837-rpi-3-b.dtb': dtb };
    const cmdline = 'console=ttyS1,115200 panic=10';
    const bootFiles = rpiBootFiles({
      model: 'rpi3',
      firmwareDir: files.firmwareDir,
      ubootBin: files.ubootBin,
      dtbs: boardDtbs,
      slots: [
        { name: 'A', kernel: files.kernel, initrd: markerInitramfs(work, files.busybox, 'A'), cmdline, dtbs: boardDtbs },
        { name: 'B', kernel: brokenKernel, initrd: markerInitramfs(work, files.busybox, 'B'), cmdline, dtbs: boardDtbs },
      ],
      tries: 3,
      sourceDateEpoch: 1700000000,
    });
    image = join(work, 'sd.img');
    buildRpiSdImage(image, bootFiles, { bootMiB: 160 });
  });

  test('the card passes the documentation checks', () => {
    const sector0 = readFileSync(image).subarray(0, 512);
    expect(checkRpiPartitionTable(sector0)).toEqual([]);
    const problems = checkRpiBootPartition('rpi3', readBootPartition(image));
    // slot B's kernel is broken on purpose for the fallback test below.
    expect(problems).toEqual(['slot-b/vmlinuz: not an arm64 Image']);
  });

  test('U-Boot runs boot.scr and boots slot A, spending one of its tries', async () => {
    const run = await powerCycle();
    expect(run.end, run.console.slice(-3000)).toBe('stopAt');
    expect(run.console).toMatch(/edgekit: booting slot A/);
    expect(MARKER.exec(run.console)?.[1]).toBe('A');
    expect(MARKER.exec(run.console)?.[2]).toMatch(/^console=ttyS1,115200 panic=10\s+edgekit\.slot=A\s*$/);
    expect(cardEnv()).toMatchObject({ BOOT_ORDER: 'A B', BOOT_A_LEFT: '2', BOOT_B_LEFT: '3' });
    expect(fsckBootPartition(image).ok).toBe(true);
  }, QEMU_TEST_TIMEOUT);

  test('BOOT_ORDER="B A" with a broken slot B: each power cycle spends a B try, then A boots by itself', async () => {
    // What the update agent does to switch: fw_setenv on the card's uboot.env.
    setCardEnv([['BOOT_ORDER', 'B A'], ['BOOT_A_LEFT', '3'], ['BOOT_B_LEFT', '3']]);

    for (const left of ['2', '1', '0']) {
      const run = await powerCycle();
      expect(run.console).toMatch(/edgekit: booting slot B/);
      expect(run.console).toMatch(SLOT_FAILED);
      expect(run.end, run.console.slice(-3000)).toBe('exit'); // the script's reset ends the run
      expect(MARKER.test(run.console)).toBe(false);
      expect(cardEnv()).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: left });
      expect(fsckBootPartition(image).ok).toBe(true);
    }

    const fallback = await powerCycle();
    expect(fallback.end, fallback.console.slice(-3000)).toBe('stopAt');
    expect(fallback.console).toMatch(/edgekit: booting slot A/);
    expect(MARKER.exec(fallback.console)?.[1]).toBe('A');
    expect(cardEnv()).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '2', BOOT_B_LEFT: '0' });
    // Only the shipped variables were written back: nothing U-Boot derived from this board.
    expect(Object.keys(cardEnv())).not.toContain('fdt_addr');
    expect(Object.keys(cardEnv())).not.toContain('fdtfile');
  }, QEMU_TEST_TIMEOUT);

  test('with no tries left anywhere, the counters start over and the board restarts', async () => {
    setCardEnv([['BOOT_A_LEFT', '0'], ['BOOT_B_LEFT', '0']]);
    const run = await powerCycle();
    expect(run.console).toMatch(/edgekit: no slot has tries left/);
    expect(run.end, run.console.slice(-3000)).toBe('exit');
    expect(cardEnv()).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' });
  }, QEMU_TEST_TIMEOUT);

  test('a damaged uboot.env: U-Boot falls back to its built-in environment, bootstd finds boot.scr, slot A boots', async () => {
    const damaged = readBootFile(image, RPI_UBOOT_ENV.file);
    damaged.fill(0x5a, 4, 64);
    writeBootFile(image, RPI_UBOOT_ENV.file, damaged);
    const run = await powerCycle();
    expect(run.console).toMatch(/bad CRC, using default environment/);
    expect(run.end, run.console.slice(-3000)).toBe('stopAt');
    expect(MARKER.exec(run.console)?.[1]).toBe('A');
    // The script starts the counters over and writes a valid environment back.
    expect(cardEnv()).toMatchObject({ BOOT_ORDER: 'A B', BOOT_A_LEFT: '2', BOOT_B_LEFT: '3' });
    expect(fsckBootPartition(image).ok).toBe(true);
  }, QEMU_TEST_TIMEOUT);
});
