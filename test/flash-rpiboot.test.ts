/**
 * `rpiboot` against a simulated Pi (test/helpers/usbboot-sim.ts) that checks every control and
 * bulk transfer the way the usbboot protocol lays them out, and records what arrived so the
 * tests compare it byte for byte with the files in the folder. bootfiles.bin archives are made
 * with GNU tar, the tool the usbboot repository packs them with.
 */
import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { rpiboot } from '../src/flash/rpiboot/client.js';
import { loadNodeUsb, nodeUsbTransport } from '../src/flash/rpiboot/node-usb-transport.js';
import { registerRpiboot } from '../src/cli/rpiboot.js';
import { EdgekitError } from '../src/util/errors.js';
import { UsbbootSim, type SimRequest } from './helpers/usbboot-sim.js';

const GET_SIZE = 0;
const READ = 1;
const DONE = 2;
const fetch = (name: string): SimRequest[] => [
  { command: GET_SIZE, name },
  { command: READ, name },
];

let root: string;
let dir: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'edgekit-rpiboot-'));
  dir = join(root, 'usbboot');
  mkdirSync(dir);
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** Writes random bytes (or text) to dir/name and returns them. */
function put(name: string, content: number | string, base = dir): Buffer {
  const data = typeof content === 'number' ? randomBytes(content) : Buffer.from(content);
  mkdirSync(dirname(join(base, name)), { recursive: true });
  writeFileSync(join(base, name), data);
  return data;
}

const fast = { pollMs: 2, settleMs: 0, timeoutMs: 300 };

function expectClean(sim: UsbbootSim): void {
  expect(sim.violations, sim.log.join('\n')).toEqual([]);
}

describe('rpiboot against a simulated BCM2837 (CM3)', () => {
  it('sends the boot message and boot code, then serves files byte for byte, refusing what it must', async () => {
    // 40000 bytes: more than two bulk pieces, and not a multiple of the piece size.
    const bootcode = put('bootcode.bin', 40000);
    const start = put('start.elf', 70001);
    const config = put('config.txt', 'uart_2ndstage=1\n');
    // Something a traversal would reach if it were not refused.
    put('etc/passwd', 'root:x:0:0::/root:/bin/sh\n', root);

    const sim = new UsbbootSim({
      productId: 0x2764,
      serial: 'a1b2c3d4',
      requests: [...fetch('config.txt'), ...fetch('start.elf'), ...fetch('missing.bin'), ...fetch('../etc/passwd'), { command: DONE, name: '' }],
      bystanders: [{ vendorId: 0x046d, productId: 0xc31c, serialIndex: 0, location: 'usb 1-2' }],
    });
    const r = await rpiboot({ usbbootDir: dir, transport: sim, ...fast });
    expectClean(sim);

    // ROM stage: a 24-byte boot message whose length is the boot code's, no signature.
    expect(sim.bootMessage).toEqual({ length: bootcode.length, signature: Buffer.alloc(20), size: 24 });
    expect(sim.secondStage!.equals(bootcode)).toBe(true);
    expect(sim.romBulkSizes.every((n) => n > 0 && n <= 16384)).toBe(true);
    expect(sim.romBulkSizes.slice(1).reduce((a, b) => a + b, 0)).toBe(bootcode.length);
    expect(sim.claims).toEqual([0, 0]);
    expect([...sim.bulkEndpoints]).toEqual([1]);
    // Order: announce + message, announce + code, status; the ROM stage is closed before stage 2 opens.
    const rom = sim.log.slice(0, sim.log.indexOf('close rom') + 1);
    expect(rom[0]).toBe('open rom');
    expect(rom[2]).toBe('control-out 40/00 value=0018 index=0000 data=0');
    expect(rom[3]).toBe('bulk-out ep1 24');
    expect(rom[4]).toBe(`control-out 40/00 value=${(bootcode.length & 0xffff).toString(16).padStart(4, '0')} index=0000 data=0`);
    expect(rom.at(-2)).toBe('control-in c0/00 value=0004 index=0000 length=4');
    expect(sim.log[rom.length]).toBe('open second');

    // Second stage: sizes, then contents; a missing or refused file gets the empty answer.
    const byRequest = sim.answers.map((a) => [a.request.command, a.request.name, a.announced, a.data.length]);
    expect(byRequest).toEqual([
      [GET_SIZE, 'config.txt', config.length, 0],
      [READ, 'config.txt', config.length, config.length],
      [GET_SIZE, 'start.elf', start.length, 0],
      [READ, 'start.elf', start.length, start.length],
      [GET_SIZE, 'missing.bin', 0, 0],
      [READ, 'missing.bin', 0, 0],
      [GET_SIZE, '../etc/passwd', 0, 0],
      [READ, '../etc/passwd', 0, 0],
      [DONE, '', 0, 0],
    ]);
    expect(sim.answers[1].data.equals(config)).toBe(true);
    expect(sim.answers[3].data.equals(start)).toBe(true);

    expect(r).toMatchObject({
      product: 0x2764,
      chip: 'bcm2835',
      serial: 'a1b2c3d4',
      filesSent: ['bootcode.bin', 'config.txt', 'start.elf'],
      filesMissing: ['missing.bin'],
      end: 'done',
    });
    expect(r.filesRefused).toEqual(['../etc/passwd: contains ".."']);
  });

  it('uses interface 1 and bulk endpoint 3 when the device shows two interfaces', async () => {
    const bootcode = put('bootcode.bin', 1000);
    const sim = new UsbbootSim({ productId: 0x2763, interfaceCount: 2, requests: [{ command: DONE, name: 'x' }] });
    const r = await rpiboot({ usbbootDir: dir, transport: sim, ...fast });
    expectClean(sim);
    expect(sim.secondStage!.equals(bootcode)).toBe(true);
    expect(sim.claims).toEqual([1, 1]);
    expect([...sim.bulkEndpoints]).toEqual([3]);
    expect(r.end).toBe('done');
  });

  it('treats a second stage that leaves the bus without Done as booted on', async () => {
    put('bootcode.bin', 100);
    const start = put('start.elf', 5000);
    const sim = new UsbbootSim({ productId: 0x2764, requests: fetch('start.elf') });
    const r = await rpiboot({ usbbootDir: dir, transport: sim, ...fast });
    expectClean(sim);
    expect(sim.answers[1].data.equals(start)).toBe(true);
    expect(r.end).toBe('disconnected');
  });
});

describe('rpiboot against a simulated BCM2711 (CM4) with bootfiles.bin', () => {
  it('reads boot code and files from the tar archive, lets a plain file override a member, keeps metadata', async () => {
    const stage = join(root, 'stage');
    const bootcode4 = put('2711/bootcode4.bin', 52000, stage);
    const bootImg = put('2711/boot.img', 200_000, stage);
    put('2711/config.txt', 'archived config\n', stage);
    const longName = `overlays/${'x'.repeat(120)}.dtbo`;
    const overlay = put(`2711/${longName}`, 333, stage);
    put('2710/bootcode.bin', 10, stage);
    execFileSync('tar', ['-cf', join(dir, 'bootfiles.bin'), '-C', stage, '2710', '2711']);
    const override = put('2711/config.txt', 'override config\n');

    const sim = new UsbbootSim({
      productId: 0x2711,
      serial: '10000000deadbeef',
      requests: [
        { command: GET_SIZE, name: '*SERIAL_NUMBER*deadbeef' },
        { command: GET_SIZE, name: '*MAC_ADDRESS*dc:a6:32:00:00:01' },
        ...fetch('config.txt'),
        ...fetch('boot.img'),
        ...fetch(longName),
        ...fetch('start4.elf'),
        { command: DONE, name: '' },
      ],
    });
    const r = await rpiboot({ usbbootDir: dir, transport: sim, ...fast });
    expectClean(sim);
    expect(sim.log[0]).toBe('open rom');
    expect(sim.secondStage!.equals(bootcode4)).toBe(true);
    expect(sim.bootMessage!.length).toBe(bootcode4.length);
    const data = (name: string) => sim.answers.find((a) => a.request.command === READ && a.request.name === name)!.data;
    expect(data('config.txt').equals(override)).toBe(true);
    expect(data('boot.img').equals(bootImg)).toBe(true);
    expect(data(longName).equals(overlay)).toBe(true);
    expect(data('start4.elf').length).toBe(0);
    expect(sim.answers.slice(0, 2).map((a) => a.announced)).toEqual([0, 0]);
    expect(r).toMatchObject({
      product: 0x2711,
      chip: 'bcm2711',
      serial: '10000000deadbeef',
      filesSent: ['bootcode4.bin', 'config.txt', 'boot.img', longName],
      filesMissing: ['start4.elf'],
      metadata: { SERIAL_NUMBER: 'deadbeef', MAC_ADDRESS: 'dc:a6:32:00:00:01' },
    });
  });
});

describe('rpiboot error paths', () => {
  it('names the missing boot code for the chip that asked', async () => {
    put('bootcode.bin', 100);
    const sim = new UsbbootSim({ productId: 0x2711, requests: [] });
    const err = await rpiboot({ usbbootDir: dir, transport: sim, ...fast }).catch((e) => e);
    expect(err).toBeInstanceOf(EdgekitError);
    expect(err.message).toContain('bootcode4.bin not found');
    expect(sim.opens).toBe(0);
  });

  it('refuses a folder with no boot code before touching USB', async () => {
    put('start.elf', 10);
    const sim = new UsbbootSim({ productId: 0x2764, requests: [] });
    await expect(rpiboot({ usbbootDir: dir, transport: sim, ...fast })).rejects.toThrow(/no bootcode\.bin, bootcode4\.bin/);
    await expect(rpiboot({ usbbootDir: join(root, 'nope'), transport: sim, ...fast })).rejects.toThrow(/usbboot folder not found/);
    expect(sim.opens).toBe(0);
  });

  it('times out naming what it waited for when the device never re-enumerates', async () => {
    const bootcode = put('bootcode.bin', 3000);
    const sim = new UsbbootSim({ productId: 0x2764, reenumerate: false, requests: [] });
    const err = await rpiboot({ usbbootDir: dir, transport: sim, ...fast }).catch((e) => e);
    expect(err).toBeInstanceOf(EdgekitError);
    expect(err.message).toMatch(/bootcode\.bin was sent but the device did not come back running it within 0\.3 s/);
    expect(sim.secondStage!.equals(bootcode)).toBe(true);
  });

  it('times out when no device is in USB boot mode', async () => {
    put('bootcode.bin', 10);
    const sim = new UsbbootSim({
      productId: 0x2764,
      requests: [],
      bystanders: [{ vendorId: 0x0a5c, productId: 0x21e8, serialIndex: 0, location: 'usb 1-3' }],
    });
    (sim as unknown as { stage: string }).stage = 'gone';
    await expect(rpiboot({ usbbootDir: dir, transport: sim, ...fast })).rejects.toThrow(/no Raspberry Pi in USB boot mode .*0a5c:2763\/2764\/2711\/2712.* within 0\.3 s/);
    expect(sim.opens).toBe(0);
  });

  it('reports a boot ROM that rejects the boot code', async () => {
    put('bootcode.bin', 10);
    const sim = new UsbbootSim({ productId: 0x2764, romStatus: -1, requests: [] });
    await expect(rpiboot({ usbbootDir: dir, transport: sim, ...fast })).rejects.toThrow(/boot ROM refused .*bootcode\.bin \(status -1\)/);
  });

  it('times out on a second stage that asks for nothing', async () => {
    put('bootcode.bin', 10);
    const sim = new UsbbootSim({ productId: 0x2764, silentSecondStage: true, requests: [] });
    await expect(rpiboot({ usbbootDir: dir, transport: sim, ...fast })).rejects.toThrow(/second stage sent no file request within 0\.3 s/);
  });
});

describe('edgekit rpiboot command', () => {
  it('prints the result as JSON', async () => {
    put('bootcode.bin', 10);
    const config = put('config.txt', 'x\n');
    const sim = new UsbbootSim({ productId: 0x2764, serial: 'cafe', requests: [...fetch('config.txt'), { command: DONE, name: '' }] });
    const program = new Command().exitOverride();
    registerRpiboot(program, { transport: sim });
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    const errSpy = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await program.parseAsync(['node', 'edgekit', 'rpiboot', '--usbboot-dir', dir, '--timeout', '1', '--json']);
    } finally {
      spy.mockRestore();
      errSpy.mockRestore();
    }
    const json = JSON.parse(out.join(''));
    expect(json).toMatchObject({ product: '0x2764', serial: 'cafe', filesSent: ['bootcode.bin', 'config.txt'], end: 'done' });
    expect(sim.answers[1].data.equals(config)).toBe(true);
  });
});

describe('edgekit rpiboot through the built CLI (npm run build)', () => {
  const ROOT = fileURLToPath(new URL('..', import.meta.url));
  const run = (...args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(process.execPath, [join(ROOT, 'bin', 'edgekit.js'), 'rpiboot', ...args], (err, stdout, stderr) =>
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr }),
      ),
    );

  it('fails with one line when no Pi is attached or the folder is wrong', async () => {
    put('bootcode.bin', 10);
    const none = await run('--usbboot-dir', dir, '--timeout', '0.2');
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^edgekit: no Raspberry Pi in USB boot mode \(USB 0a5c:2763\/2764\/2711\/2712\) appeared within 0\.2 s: [^\n]*\n$/);
    const bad = await run('--usbboot-dir', join(root, 'missing'));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toBe(`edgekit: ${join(root, 'missing')}: usbboot folder not found\n`);
    const timeout = await run('--usbboot-dir', dir, '--timeout', 'soon');
    expect(timeout.stderr).toBe('edgekit: --timeout soon: not a number of seconds\n');
  });
});

describe('node-usb transport', () => {
  it('loads the usb package and lists the bus', async () => {
    expect(typeof loadNodeUsb().getDeviceList).toBe('function');
    const devices = await nodeUsbTransport().list();
    expect(Array.isArray(devices)).toBe(true);
    for (const d of devices) expect(typeof d.vendorId).toBe('number');
  });

  it('says in one line when the usb package cannot be loaded', () => {
    let err: unknown;
    try {
      loadNodeUsb('usb-package-that-is-not-installed');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(EdgekitError);
    expect((err as Error).message).toMatch(/^USB access needs the optional "usb" package, which could not be loaded \(Cannot find module [^\n]*\); run npm install usb@2$/);
  });

  it('finds no Pi on this machine and says so in one line', async () => {
    put('bootcode.bin', 10);
    const err = await rpiboot({ usbbootDir: dir, timeoutMs: 0, pollMs: 1 }).catch((e) => e);
    // A machine with a Pi in boot mode attached would get further; this one has none.
    expect(err).toBeInstanceOf(EdgekitError);
    expect(err.message).not.toContain('\n');
    expect(err.message).toMatch(/no Raspberry Pi in USB boot mode/);
    expect(readFileSync(join(dir, 'bootcode.bin')).length).toBe(10);
  });
});
