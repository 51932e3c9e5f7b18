/**
 * The bench serial console: openConsole and watchBoots against serialport's mock binding, then the
 * real path end to end, a built image booting under QEMU with its console on a pty, read by
 * `edgekit console` and by watchBoots (one QEMU at a time).
 */
import { spawn } from 'node:child_process';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { builtImage, CLI, edgekit, type BuiltImage } from './helpers/built-images.js';
import { bootOnPty } from './helpers/console-qemu.js';
import { createMockPort, device, openMockPort, resetMockPorts } from './helpers/console-mock.js';
import { ConsoleWaitError, openConsole, watchBoots } from '../src/flash/console.js';

const MARKER = /edgekit: minimal is up/;

describe('openConsole on a mock port', () => {
  afterEach(() => resetMockPorts());

  it('matches markers in cleaned text, in order, across chunk boundaries', async () => {
    createMockPort('/dev/ttyMOCK0');
    const con = await openConsole('/dev/ttyMOCK0', { baud: 57600, openPort: openMockPort });
    expect(device('/dev/ttyMOCK0').baudRate()).toBe(57600);
    const first = con.waitFor(/step \d+/, 5_000);
    device('/dev/ttyMOCK0').send('\x1b[1;32mst');
    device('/dev/ttyMOCK0').send('ep 1\x1b[0m\r\nstep 2\r\n');
    expect(await first).toBe('step 1');
    expect(await con.waitFor(/step \d+/, 5_000)).toBe('step 2');
    expect(con.output.text).toBe('step 1\nstep 2\n');
    await con.close();
    await con.close();
  });

  it('write() reaches the device', async () => {
    createMockPort('/dev/ttyMOCK1');
    const con = await openConsole('/dev/ttyMOCK1', { openPort: openMockPort });
    await con.write('root\n');
    expect(device('/dev/ttyMOCK1').received()).toBe('root\n');
    await con.close();
  });

  it('a marker that never comes rejects with the port, the pattern and the console tail', async () => {
    createMockPort('/dev/ttyMOCK2');
    const con = await openConsole('/dev/ttyMOCK2', { openPort: openMockPort });
    device('/dev/ttyMOCK2').send('U-Boot 2024.01\r\nStarting kernel ...\r\n');
    const err = await con.waitFor(/login:/, 200).catch((e) => e);
    expect(err).toBeInstanceOf(ConsoleWaitError);
    expect(err.summary).toBe('/dev/ttyMOCK2: timed out after 0.2 s before the console showed /login:/');
    expect(err.tail).toBe('U-Boot 2024.01\nStarting kernel ...');
    expect(err.message).toContain('last console lines:\nU-Boot 2024.01');
    await con.close();
  });

  it('an unplugged device ends the wait at once', async () => {
    createMockPort('/dev/ttyMOCK3');
    const con = await openConsole('/dev/ttyMOCK3', { openPort: openMockPort });
    const wait = con.waitFor(/never/, 60_000);
    device('/dev/ttyMOCK3').unplug();
    await expect(wait).rejects.toThrow(/\/dev\/ttyMOCK3: the port closed before the console showed \/never\//);
    await con.closed;
  });

  it('a port that does not exist fails to open with its name', async () => {
    await expect(openConsole('/dev/ttyMISSING', { openPort: openMockPort })).rejects.toThrow(/\/dev\/ttyMISSING: cannot open the serial port/);
    await expect(openConsole('/dev/ttyMOCK0', { baud: 0, openPort: openMockPort })).rejects.toThrow(/baud rate 0/);
  });

  it('watchBoots: one result per target, in order, each from its own port', async () => {
    for (const p of ['/dev/ttyB0', '/dev/ttyB1']) createMockPort(p);
    const pairs = [
      { target: '/dev/sdb', port: '/dev/ttyB0' },
      { target: '/dev/sdc', port: '/dev/ttyB1' },
      { target: '/dev/sdd', port: '/dev/ttyB9' },
    ];
    const watching = watchBoots(pairs, /gw-\d+ is up/, 1_000, { openPort: openMockPort });
    // Both real ports are open before any wait starts; only the first device boots.
    await new Promise((r) => setTimeout(r, 50));
    device('/dev/ttyB0').send('booting\r\ngw-1 is up\r\n');
    device('/dev/ttyB1').send('booting\r\nkernel panic\r\n');
    const results = await watching;
    expect(results.map((r) => [r.target, r.ok])).toEqual([
      ['/dev/sdb', true],
      ['/dev/sdc', false],
      ['/dev/sdd', false],
    ]);
    expect(results[0].matched).toBe('gw-1 is up');
    expect(results[1].error).toBe('/dev/ttyB1: timed out after 1 s before the console showed /gw-\\d+ is up/');
    expect(results[1].tail).toBe('booting\nkernel panic');
    expect(results[2].error).toMatch(/\/dev\/ttyB9: cannot open the serial port/);
    await expect(watchBoots([pairs[0], { ...pairs[1], port: pairs[0].port }], /x/, 1, { openPort: openMockPort })).rejects.toThrow(/given for two targets/);
  });
});

/** Resolves when `stream` has shown text matching `re`. */
function waitForText(stream: NodeJS.ReadableStream, re: RegExp, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const onData = (b: Buffer) => {
      seen += b.toString('utf8');
      if (re.test(seen)) done();
    };
    const timer = setTimeout(() => done(new Error(`not seen within ${ms} ms: ${re}; got:\n${seen.slice(-2000)}`)), ms);
    const done = (err?: Error) => {
      clearTimeout(timer);
      stream.off('data', onData);
      if (err) reject(err);
      else resolve();
    };
    stream.on('data', onData);
  });
}

describe('a QEMU console on a pty, as a bench serial adapter', () => {
  let img: BuiltImage;
  beforeAll(async () => {
    img = await builtImage('minimal', 'qemu-x86_64');
  }, 600_000);

  it('`edgekit console <pty> --expect` sees the boot marker', async () => {
    const qemu = await bootOnPty(img.image, 'qemu-x86_64');
    try {
      // Started at once: what the guest prints before the CLI opens the pty is lost, and the marker comes seconds later.
      const r = await edgekit(['console', qemu.ptyPath, '--expect', 'minimal is up', '--timeout', '180']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/Linux version/);
      expect(r.stdout).toMatch(MARKER);
      expect(r.stderr).toBe(`edgekit: ${qemu.ptyPath}: saw /minimal is up/\n`);
    } finally {
      await qemu.stop();
    }
  }, 300_000);

  it('watchBoots passes on the marker; an expectation that never comes fails with one line', async () => {
    const qemu = await bootOnPty(img.image, 'qemu-x86_64');
    try {
      const [ok] = await watchBoots([{ target: 'card-1', port: qemu.ptyPath }], MARKER, 180_000);
      expect(ok).toEqual({ target: 'card-1', port: qemu.ptyPath, ok: true, matched: 'edgekit: minimal is up' });
      // The guest is up and quiet now: nothing more comes.
      const [late] = await watchBoots([{ target: 'card-1', port: qemu.ptyPath }], /this never shows/, 3_000);
      expect(late.ok).toBe(false);
      expect(late.error).toBe(`${qemu.ptyPath}: timed out after 3 s before the console showed /this never shows/`);
      const cli = await edgekit(['console', qemu.ptyPath, '--expect', 'this never shows', '--timeout', '3']);
      expect(cli.code).not.toBe(0);
      expect(cli.stderr).toBe(`edgekit: ${qemu.ptyPath}: timed out after 3 s before the console showed /this never shows/\n`);

      // The device going away (here: QEMU ending) ends an interactive console with one line.
      const child = spawn('node', [CLI, 'console', qemu.ptyPath], { stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      child.stdin.write('\r'); // a fresh login prompt proves the console is attached before QEMU goes
      await waitForText(child.stdout, /login:/, 30_000);
      await qemu.stop();
      expect(await exited).toBe(1);
      expect(stderr).toBe(`edgekit: ${qemu.ptyPath}: the port closed (device unplugged?)\n`);
    } finally {
      await qemu.stop();
    }
  }, 300_000);

  it('interactive `edgekit console`: keys reach the guest, its echo comes back, Ctrl-] quits', async () => {
    const qemu = await bootOnPty(img.image, 'qemu-x86_64');
    try {
      // `script` gives the CLI a terminal, so stdin is raw and Ctrl-] is a key, as for a person.
      const child = spawn('script', ['-qfec', `node ${CLI} console ${qemu.ptyPath}`, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'] });
      await waitForText(child.stdout, /login:/, 180_000);
      const echoed = waitForText(child.stdout, /edgekit-typed-this[\s\S]*Password:/, 30_000);
      child.stdin.write('edgekit-typed-this\r');
      // busybox getty echoes the name back and asks for a password: both directions work.
      await echoed;
      const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      child.stdin.write('\x1d');
      expect(await exited).toBe(0);
    } finally {
      await qemu.stop();
    }
  }, 300_000);
});
