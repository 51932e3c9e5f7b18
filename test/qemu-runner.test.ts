import { describe, it, expect, afterAll, afterEach, vi } from 'vitest';
import { existsSync, mkdirSync, writeFileSync, readFileSync, statSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { Command } from 'commander';
import { findUefiFirmware, listDescriptors } from '../src/qemu/firmware.js';
import { buildQemuArgs } from '../src/qemu/args.js';
import { ConsoleOutput } from '../src/qemu/console.js';
import { startQemu, type QemuSession } from '../src/qemu/run.js';
import { runImage } from '../src/qemu/run-image.js';
import { registerRun } from '../src/cli/run.js';
import { EdgekitError } from '../src/util/errors.js';
import { makeScratch, blankDisk, writeDescriptor, readPty } from './helpers/qemu-fixtures.js';

const scratch = makeScratch('qemu');
afterAll(() => scratch.cleanup());

/** Generous: TCG on a shared 2-core machine; a test fails by a clear error, never by being slow. */
const BOOT_TIMEOUT_MS = 180_000;
/** Vitest's own limit per QEMU test: above BOOT_TIMEOUT_MS so our error, not vitest's, reports a hang. */
const TEST_TIMEOUT_MS = 2 * BOOT_TIMEOUT_MS;
/** What edk2's shell prints on the serial console when no disk is bootable (seen on OVMF and AAVMF). */
const SHELL_BANNER = /UEFI Interactive Shell v[\d.]+/;

// One QEMU at a time: each test stops its session before the next starts.
let running: QemuSession | undefined;
afterEach(async () => {
  await running?.stop();
  running = undefined;
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

describe('UEFI firmware discovery', () => {
  it('finds the installed OVMF and AAVMF code and vars files, without Secure Boot', () => {
    for (const arch of ['x86_64', 'aarch64'] as const) {
      const fw = findUefiFirmware(arch);
      expect(statSync(fw.code).isFile()).toBe(true);
      expect(statSync(fw.varsTemplate).isFile()).toBe(true);
      expect(fw.features).not.toContain('secure-boot');
      // The choice agrees with the descriptor QEMU's packages installed for this architecture.
      const desc = JSON.parse(readFileSync(fw.descriptor, 'utf8'));
      expect(desc.targets.map((t: { architecture: string }) => t.architecture)).toContain(arch);
      expect(desc.mapping.executable.filename).toBe(fw.code);
      expect(desc.mapping['nvram-template'].filename).toBe(fw.varsTemplate);
    }
  });

  it('follows priority order, overrides by file name, masking, and prefers plain over secure builds', () => {
    const base = join(scratch.dir, 'fw');
    mkdirSync(join(base, 'files'), { recursive: true });
    const files = ['sec.code', 'sec.vars', 'plain.code', 'plain.vars', 'etc.code', 'etc.vars'].map((n) => {
      const p = join(base, 'files', n);
      writeFileSync(p, n);
      return p;
    });
    const [secCode, secVars, plainCode, plainVars, etcCode, etcVars] = files;
    const usr = join(base, 'usr');
    const etc = join(base, 'etc');
    writeDescriptor(usr, '40-secure.json', { arch: 'x86_64', machines: ['pc-q35-*'], code: secCode, vars: secVars, features: ['secure-boot', 'requires-smm'] });
    writeDescriptor(usr, '60-plain.json', { arch: 'x86_64', machines: ['pc-q35-*'], code: plainCode, vars: plainVars });
    writeDescriptor(usr, '70-arm.json', { arch: 'aarch64', machines: ['virt-*'], code: plainCode, vars: plainVars });

    let fw = findUefiFirmware('x86_64', { machine: 'q35', dirs: [usr, etc] });
    expect(fw.code).toBe(plainCode);

    // A same-named descriptor in the higher-priority directory replaces the lower one.
    writeDescriptor(etc, '60-plain.json', { arch: 'x86_64', machines: ['pc-q35-*'], code: etcCode, vars: etcVars });
    fw = findUefiFirmware('x86_64', { machine: 'q35', dirs: [usr, etc] });
    expect(fw.code).toBe(etcCode);
    expect(fw.descriptor).toBe(join(etc, '60-plain.json'));

    // An empty file masks it; only the Secure Boot build is left, and it is used as a last resort.
    writeFileSync(join(etc, '60-plain.json'), '');
    expect(listDescriptors([usr, etc])).toEqual([join(usr, '40-secure.json'), join(usr, '70-arm.json')]);
    fw = findUefiFirmware('x86_64', { machine: 'q35', dirs: [usr, etc] });
    expect(fw.code).toBe(secCode);
    expect(fw.features).toContain('requires-smm');

    // Machine globs are honoured.
    expect(() => findUefiFirmware('x86_64', { machine: 'microvm', dirs: [usr, etc] })).toThrow(EdgekitError);
  });

  it('names the package to install when nothing fits', () => {
    const empty = join(scratch.dir, 'no-descriptors');
    expect(() => findUefiFirmware('x86_64', { dirs: [empty] })).toThrow(/install the ovmf package/);
    expect(() => findUefiFirmware('aarch64', { dirs: [empty] })).toThrow(/install the qemu-efi-aarch64 package/);
  });
});

describe('console text', () => {
  it('matches markers across chunk boundaries and colour escapes', () => {
    const out = new ConsoleOutput();
    const feed = '\x1b[1m\x1b[33m\x1b[40mShell> \x1b[0m[\x1b[0;32m  OK  \x1b[0m] Reached target\r\n';
    // A 'data' listener (what waitFor is) must already find the chunk's text.
    let textAtLastData = '';
    out.on('data', () => (textAtLastData = out.text));
    // One byte at a time: every escape sequence is cut somewhere.
    for (const b of Buffer.from(feed)) out.push(Buffer.from([b]));
    expect(textAtLastData).toBe('Shell> [  OK  ] Reached target\n');
    out.finish();
    expect(out.text).toBe('Shell> [  OK  ] Reached target\n');
    expect(out.search(/\[  OK  \] Reached target$/m, 0)?.text).toBe('[  OK  ] Reached target');
  });
});

describe('QEMU command line', () => {
  it('attaches raspi images as SD cards and leaves fixed-board memory to QEMU', () => {
    const args = buildQemuArgs({ arch: 'aarch64', machine: 'raspi3b', firmware: 'none', image: '/tmp/a,b.img', serial: 'pipe' });
    expect(args).toContain('if=sd,format=raw,file=/tmp/a,,b.img');
    expect(args).not.toContain('-m');
    expect(args).not.toContain('-cpu');
  });
});

describe('booting under QEMU (TCG)', () => {
  it('x86_64: OVMF reaches the UEFI shell, takes typed input, forwards ports, and cleans its vars copy', async () => {
    const port = await freePort();
    const s = await startQemu({
      arch: 'x86_64',
      firmware: 'uefi',
      image: blankDisk(scratch.dir, 'x86.img'),
      snapshot: true,
      serial: 'pipe',
      net: { user: true, hostForwards: [{ hostPort: port, guestPort: 22 }] },
    });
    running = s;
    expect(s.command[0]).toBe('qemu-system-x86_64');
    expect(s.varsPath && existsSync(s.varsPath)).toBe(true);
    expect(await s.waitFor(SHELL_BANNER, BOOT_TIMEOUT_MS)).toMatch(/^UEFI Interactive Shell/);
    await s.waitFor(/Shell> /, BOOT_TIMEOUT_MS);
    // QEMU's user network listens on the forwarded host port.
    expect(await canConnect(port)).toBe(true);

    // The shell runs what we type: its output, not only the echo, contains the joined word.
    s.write('echo edgekit-ABC\r');
    expect(await s.waitFor(/^edgekit-ABC$/m, BOOT_TIMEOUT_MS)).toBe('edgekit-ABC');

    // A marker that never comes: a clear error with the console's last lines.
    const err = await s.waitFor(/this never prints/, 1_000).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EdgekitError);
    expect((err as Error).message).toMatch(/timed out after 1 s before the console showed \/this never prints\//);
    expect((err as Error).message).toContain('Shell>');

    // The shell's `reset` reboots the guest; QEMU stays up (no -no-reboot) and the firmware comes back.
    s.write('reset\r');
    await s.waitFor(/UEFI firmware|BdsDxe/, BOOT_TIMEOUT_MS);
    await s.waitFor(SHELL_BANNER, BOOT_TIMEOUT_MS);

    const tempDir = dirname(s.varsPath!);
    const exit = await s.stop();
    expect(exit.code === 0 || exit.signal !== null).toBe(true);
    expect(existsSync(s.varsPath!)).toBe(false);
    expect(existsSync(tempDir)).toBe(false);
  }, TEST_TIMEOUT_MS);

  it('aarch64: AAVMF reaches the UEFI shell through runImage', async () => {
    const result = await runImage({
      arch: 'aarch64',
      firmware: 'uefi',
      image: blankDisk(scratch.dir, 'arm.img'),
      snapshot: true,
      expect: SHELL_BANNER,
      timeoutMs: BOOT_TIMEOUT_MS,
      onStart: (s) => {
        running = s;
      },
    });
    expect(result.matched).toMatch(/^UEFI Interactive Shell/);
  }, TEST_TIMEOUT_MS);

  it('exitOnReboot: a guest reboot ends QEMU', async () => {
    const s = await startQemu({
      arch: 'aarch64',
      firmware: 'uefi',
      image: blankDisk(scratch.dir, 'reboot.img'),
      snapshot: true,
      serial: 'pipe',
      exitOnReboot: true,
    });
    running = s;
    await s.waitFor(/Shell> /, BOOT_TIMEOUT_MS);
    s.write('reset\r');
    const exit = await s.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(existsSync(s.varsPath!)).toBe(false);
  }, TEST_TIMEOUT_MS);

  it('pty: a reader that opens the announced pty at once sees the firmware output', async () => {
    const s = await startQemu({ arch: 'aarch64', firmware: 'uefi', image: blankDisk(scratch.dir, 'pty.img'), snapshot: true, serial: 'pty' });
    running = s;
    expect(s.ptyPath).toMatch(/^\/dev\/pts\/\d+$/);
    const reader = readPty(s.ptyPath!, SHELL_BANNER);
    const text = await Promise.race([reader.done, s.exited.then(() => reader.text())]);
    expect(text).toMatch(SHELL_BANNER);
    // The session leaves the console to the pty's reader.
    await expect(s.waitFor(/x/, 1_000)).rejects.toThrow(/console of this QEMU is on \/dev\/pts\//);
    await s.stop();
  }, TEST_TIMEOUT_MS);

  it('reports QEMU failing to start with what QEMU said', async () => {
    const s = await startQemu({ arch: 'x86_64', firmware: 'none', serial: 'pipe', extraArgs: ['-device', 'no-such-device'] });
    running = s;
    const err = await s.waitFor(/anything/, BOOT_TIMEOUT_MS).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EdgekitError);
    expect((err as Error).message).toMatch(/QEMU exited \(code 1\)/);
    expect((err as Error).message).toMatch(/QEMU said: .*no-such-device/);
  }, TEST_TIMEOUT_MS);
});

describe('edgekit run', () => {
  function program(): Command {
    const p = new Command().exitOverride();
    registerRun(p);
    return p;
  }

  it('succeeds when --expect shows up and fails with the console tail on --timeout', async () => {
    const img = blankDisk(scratch.dir, 'cli.img');
    // The console is echoed to stdout: capture it instead of painting the test log with escape codes.
    let echoed = '';
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      echoed += chunk.toString();
      return true;
    });
    let err: unknown;
    try {
      await program().parseAsync(['run', img, '--arch', 'aarch64', '--expect', 'UEFI Interactive Shell', '--timeout', '180'], { from: 'user' });
      expect(echoed).toContain('UEFI Interactive Shell');
      err = await program()
        .parseAsync(['run', img, '--arch', 'aarch64', '--expect', 'never printed', '--timeout', '3'], { from: 'user' })
        .catch((e: unknown) => e);
    } finally {
      spy.mockRestore();
    }
    expect(err).toBeInstanceOf(EdgekitError);
    expect((err as Error).message).toMatch(/timed out after 3 s before the console showed \/never printed\//);
  }, TEST_TIMEOUT_MS);

  it('rejects a run it cannot place on a machine', async () => {
    const img = blankDisk(scratch.dir, 'cli2.img');
    await expect(program().parseAsync(['run', img], { from: 'user' })).rejects.toThrow(/pass --board <id> or --arch/);
    await expect(program().parseAsync(['run', img, '--arch', 'riscv64'], { from: 'user' })).rejects.toThrow(/expected x86_64 or aarch64/);
    await expect(program().parseAsync(['run', img, '--arch', 'x86_64', '--forward', '22'], { from: 'user' })).rejects.toThrow(/host port.*guest port/);
  });
});
