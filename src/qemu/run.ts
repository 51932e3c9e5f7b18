/**
 * One QEMU process and its serial console. The session owns a temp directory (the writable UEFI
 * vars copy) that is removed when QEMU ends, however it ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { rmSync, constants as fsConstants } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EdgekitError } from '../util/errors.js';
import { buildQemuArgs, machineFor, qemuBinary, QEMU_PACKAGE, type QemuOptions } from './args.js';
import { ConsoleOutput } from './console.js';
import { findUefiFirmware } from './firmware.js';
import { attachTerminal } from './terminal.js';

export interface QemuExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface QemuSession {
  /** The full command line (binary first), for logs and bug reports. */
  readonly command: string[];
  /** Console text ('pipe'/'stdio' modes): 'data' events with raw chunks, async-iterable, cleaned `text`. */
  readonly output: ConsoleOutput;
  /**
   * The pseudo-terminal of the console in 'pty' mode. The session never reads it: the program that
   * does must open it as soon as this is known, because QEMU drops what the guest writes while no one
   * has the pty open (firmware banners and early kernel messages come within a second).
   */
  readonly ptyPath?: string;
  /** The writable UEFI vars copy, inside the session's temp directory ('uefi' firmware only). */
  readonly varsPath?: string;
  /**
   * Resolves with the text matching `re` in console output after the previous match (escape sequences
   * and CRs removed), so consecutive calls follow the boot in order. Rejects with an EdgekitError carrying
   * the console tail when `timeoutMs` passes or QEMU exits first.
   */
  waitFor(re: RegExp, timeoutMs: number): Promise<string>;
  /** Types into the console ('pipe'/'stdio' modes). */
  write(data: string | Buffer): void;
  /** Ends QEMU (SIGTERM, then SIGKILL) and removes the temp directory. Safe to call twice. */
  stop(): Promise<QemuExit>;
  /** QEMU has exited, its output is consumed, and the temp directory is gone. */
  readonly exited: Promise<QemuExit>;
}

/** Grace period between SIGTERM and SIGKILL: QEMU exits on SIGTERM at once unless wedged. */
const STOP_GRACE_MS = 5_000;
const PTY_ANNOUNCE_TIMEOUT_MS = 30_000;
const STDERR_KEEP_CHARS = 4_096;

/** QEMU processes still running, killed if this process exits without stopping them. */
const live = new Set<{ child: ChildProcess; tempDir: string }>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const { child, tempDir } of live) {
      child.kill('SIGKILL');
      rmSync(tempDir, { recursive: true, force: true });
    }
  });
}

function describeExit(e: QemuExit): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

export async function startQemu(opts: QemuOptions): Promise<QemuSession> {
  const firmware =
    opts.firmware === 'uefi'
      ? findUefiFirmware(opts.arch, { machine: machineFor(opts), dirs: opts.firmwareDirs })
      : undefined;
  const tempDir = await mkdtemp(join(tmpdir(), 'edgekit-qemu-'));
  let varsPath: string | undefined;
  let args: string[];
  try {
    if (firmware) {
      varsPath = join(tempDir, `vars.${firmware.format}`);
      // The template is shared by every VM on the host; each run gets its own copy to write.
      await copyFile(firmware.varsTemplate, varsPath, fsConstants.COPYFILE_FICLONE);
    }
    args = buildQemuArgs(opts, firmware && varsPath ? { firmware, varsCopy: varsPath } : undefined);
  } catch (err) {
    await rm(tempDir, { recursive: true, force: true });
    throw err;
  }

  const binary = qemuBinary(opts.arch);
  const child = spawn(binary, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const entry = { child, tempDir };
  live.add(entry);
  installExitHook();

  const output = new ConsoleOutput();
  let stderr = '';
  let spawnError: Error | undefined;
  // In pty mode stdout carries only QEMU's own messages (7.2 announces the pty there, newer ones on stderr).
  let announcements = '';
  const consoleOnStdout = opts.serial !== 'pty';
  child.stdout!.on('data', (b: Buffer) => {
    if (consoleOnStdout) output.push(b);
    else announcements += b.toString('utf8');
  });
  child.stderr!.on('data', (b: Buffer) => {
    stderr = (stderr + b.toString('utf8')).slice(-STDERR_KEEP_CHARS);
  });
  child.stdin!.on('error', () => {}); // writes after QEMU died are moot; the exit is reported instead
  child.on('error', (err) => (spawnError = err));

  const exited = new Promise<QemuExit>((resolve) => {
    child.on('close', (code, signal) => {
      live.delete(entry);
      output.finish();
      rm(tempDir, { recursive: true, force: true }).finally(() => resolve({ code, signal }));
    });
  });
  let exitInfo: QemuExit | undefined;
  void exited.then((e) => (exitInfo = e));

  const qemuSaid = () => {
    if (spawnError && (spawnError as NodeJS.ErrnoException).code === 'ENOENT') {
      return `${binary} not found: install the ${QEMU_PACKAGE[opts.arch]} package`;
    }
    const said = (stderr + announcements).trim();
    return said ? `QEMU said: ${said}` : 'QEMU printed nothing on stderr';
  };

  let cursor = 0;
  const waitFor = (re: RegExp, timeoutMs: number): Promise<string> => {
    if (opts.serial === 'pty') {
      return Promise.reject(new EdgekitError(`the console of this QEMU is on ${ptyPath}; read it from there`));
    }
    const fail = (why: string) => {
      const tail = output.tail();
      return new EdgekitError(
        `${why} before the console showed ${re}` +
          (tail ? `; last console lines:\n${tail}` : '; the console printed nothing') +
          (exitInfo || spawnError ? `\n${qemuSaid()}` : ''),
      );
    };
    const ended = () => exited.then((e) => `QEMU exited (${describeExit(e)})`);
    return output.waitForMatch(re, cursor, timeoutMs, fail, ended).then((hit) => {
      cursor = Math.max(cursor, hit.end);
      return hit.text;
    });
  };

  let stopping: Promise<QemuExit> | undefined;
  const stop = (): Promise<QemuExit> => {
    stopping ??= (async () => {
      if (!exitInfo && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const killer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
        try {
          return await exited;
        } finally {
          clearTimeout(killer);
        }
      }
      return exited;
    })();
    return stopping;
  };

  const detach = opts.serial === 'stdio' ? attachTerminal(output, child.stdin!, () => void stop()) : undefined;
  void exited.then(() => detach?.());

  let ptyPath: string | undefined;
  if (opts.serial === 'pty') {
    try {
      ptyPath = await announcedPty(() => announcements + stderr, child, exited, PTY_ANNOUNCE_TIMEOUT_MS);
    } catch (err) {
      await stop();
      throw new EdgekitError(`${(err as Error).message}; ${qemuSaid()}`);
    }
  }

  const session: QemuSession = {
    command: [binary, ...args],
    output,
    ptyPath,
    varsPath,
    waitFor,
    write: (data) => {
      if (opts.serial === 'pty') throw new EdgekitError(`the console of this QEMU is on ${ptyPath}; write to it there`);
      child.stdin!.write(data);
    },
    stop,
    exited,
  };
  return session;
}

/** Waits for QEMU's "char device redirected to /dev/pts/N" line. */
function announcedPty(
  said: () => string,
  child: ChildProcess,
  exited: Promise<QemuExit>,
  timeoutMs: number,
): Promise<string> {
  const pattern = /char device redirected to (\/dev\/\S+)/;
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => finish(new Error(`QEMU did not announce its pty within ${timeoutMs / 1000} s`)), timeoutMs);
    const check = () => {
      const m = pattern.exec(said());
      if (m) finish(undefined, m[1]);
    };
    const finish = (err?: Error, path?: string) => {
      clearTimeout(timer);
      child.stdout!.off('data', onData);
      child.stderr!.off('data', onData);
      if (err) reject(err);
      else resolve(path!);
    };
    // Listeners added after the session's own, so `said()` already holds this chunk.
    const onData = () => check();
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((e) => finish(new Error(`QEMU exited (${describeExit(e)}) before announcing its pty`)));
    check();
  });
}
