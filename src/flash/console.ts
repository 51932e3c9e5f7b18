/**
 * A device's serial console on the bench: a USB serial adapter (/dev/ttyUSB0), a board's own
 * (/dev/ttyACM0), or a QEMU pty. Used to watch the first boot of freshly flashed cards for the
 * image's marker, and by `edgekit console` for a human.
 *
 * Text is cleaned (escape sequences, CRs) by the same ConsoleOutput the QEMU runner uses, so a
 * marker matches the same way on real hardware and under emulation.
 */
// serialport: Node has no termios access (baud rate, raw mode) for serial devices; its prebuilt native binding does.
import { SerialPort } from 'serialport';
import { ConsoleOutput } from '../qemu/console.js';
import { EdgekitError } from '../util/errors.js';

export const DEFAULT_BAUD = 115200;

/** What openConsole needs from a port; `serialport`'s SerialPort and SerialPortMock both are one. */
export interface SerialPortLike {
  on(event: 'open', cb: () => void): unknown;
  on(event: 'data', cb: (b: Buffer) => void): unknown;
  on(event: 'error', cb: (err: Error) => void): unknown;
  on(event: 'close', cb: () => void): unknown;
  write(data: string | Buffer, cb?: (err: Error | null | undefined) => void): boolean;
  drain(cb: (err: Error | null) => void): void;
  close(cb?: (err: Error | null) => void): void;
  readonly isOpen: boolean;
}

export interface ConsoleOptions {
  baud?: number;
  /** Opens the port (tests pass serialport's SerialPortMock); by default the real serial device. */
  openPort?: (path: string, baudRate: number) => SerialPortLike;
}

export interface SerialConsole {
  readonly port: string;
  /** Raw chunks as 'data' events (for echoing), cleaned `text`, `tail()`; ends when the port closes. */
  readonly output: ConsoleOutput;
  /**
   * Resolves with the text matching `re` after the previous match (so consecutive calls follow the
   * boot in order); rejects with a ConsoleWaitError when `timeoutMs` passes or the port closes first.
   */
  waitFor(re: RegExp, timeoutMs: number): Promise<string>;
  write(data: string | Buffer): Promise<void>;
  /** Closes the port; safe to call twice. */
  close(): Promise<void>;
  /** Resolves when the port is closed, by close() or because the device went away. */
  readonly closed: Promise<void>;
}

/** A marker that did not come: the one-line `summary` for a status line, and the console's last lines. */
export class ConsoleWaitError extends EdgekitError {
  constructor(
    readonly summary: string,
    readonly tail: string,
  ) {
    super(summary + (tail ? `; last console lines:\n${tail}` : '; the console printed nothing'));
    this.name = 'ConsoleWaitError';
  }
}

const realPort = (path: string, baudRate: number): SerialPortLike =>
  // No exclusive lock: a QEMU pty is already held by QEMU, and Linux's TIOCEXCL only stops others opening after us.
  new SerialPort({ path, baudRate, autoOpen: true, lock: false });

/**
 * Opens `port` at once and starts collecting its output: on a pty, what the other side writes
 * while no one has it open is lost, so the caller should open before powering the device.
 */
export async function openConsole(port: string, opts: ConsoleOptions = {}): Promise<SerialConsole> {
  const baud = opts.baud ?? DEFAULT_BAUD;
  if (!Number.isInteger(baud) || baud <= 0) throw new EdgekitError(`${port}: baud rate ${baud} is not a positive integer`);
  const output = new ConsoleOutput();
  let sp: SerialPortLike;
  try {
    sp = (opts.openPort ?? realPort)(port, baud);
  } catch (err) {
    throw new EdgekitError(`${port}: cannot open the serial port (${(err as Error).message})`);
  }
  // Data listener first: nothing read after open may be missed.
  sp.on('data', (b: Buffer) => output.push(b));
  await new Promise<void>((resolve, reject) => {
    const onOpen = () => resolve();
    const onError = (err: Error) => reject(new EdgekitError(`${port}: cannot open the serial port (${err.message})`));
    sp.on('open', onOpen);
    sp.on('error', onError);
    if (sp.isOpen) resolve();
  });
  let lastError: Error | undefined;
  sp.on('error', (err) => (lastError = err));
  const closed = new Promise<void>((resolve) =>
    sp.on('close', () => {
      output.finish();
      resolve();
    }),
  );

  let cursor = 0;
  const waitFor = (re: RegExp, timeoutMs: number): Promise<string> =>
    output
      .waitForMatch(
        re,
        cursor,
        timeoutMs,
        (why) => new ConsoleWaitError(`${port}: ${why} before the console showed ${re}`, output.tail()),
        () => `the port closed${lastError ? ` (${lastError.message})` : ''}`,
      )
      .then((hit) => {
        cursor = Math.max(cursor, hit.end);
        return hit.text;
      });

  const write = (data: string | Buffer): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      sp.write(data, (err) => {
        if (err) return reject(new EdgekitError(`${port}: write failed (${err.message})`));
        sp.drain((e) => (e ? reject(new EdgekitError(`${port}: write failed (${e.message})`)) : resolve()));
      });
    });

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= sp.isOpen ? new Promise<void>((resolve) => sp.close(() => resolve())).then(() => closed) : closed;
    return closing;
  };

  return { port, output, waitFor, write, close, closed };
}

export interface BootWatch {
  target: string;
  port: string;
}

export interface BootResult {
  target: string;
  port: string;
  ok: boolean;
  /** The text that matched `expect`. */
  matched?: string;
  /** One line: why it failed (port would not open, timeout, port closed). */
  error?: string;
  /** The console's last lines, when it failed. */
  tail?: string;
}

/**
 * Watches the first boot of several devices at once, one serial port each: every port is opened
 * before any wait starts, and each passes when `expect` shows on it within `timeoutMs`.
 */
export async function watchBoots(pairs: BootWatch[], expect: RegExp, timeoutMs: number, opts: ConsoleOptions = {}): Promise<BootResult[]> {
  const ports = new Set<string>();
  for (const p of pairs) {
    if (ports.has(p.port)) throw new EdgekitError(`${p.port}: given for two targets; each target needs its own console`);
    ports.add(p.port);
  }
  const opened = await Promise.allSettled(pairs.map((p) => openConsole(p.port, opts)));
  return Promise.all(
    pairs.map(async (p, i): Promise<BootResult> => {
      const o = opened[i];
      if (o.status === 'rejected') return { ...p, ok: false, error: (o.reason as Error).message };
      const con = o.value;
      try {
        const matched = await con.waitFor(expect, timeoutMs);
        return { ...p, ok: true, matched };
      } catch (err) {
        const e = err as Error;
        return e instanceof ConsoleWaitError ? { ...p, ok: false, error: e.summary, tail: e.tail } : { ...p, ok: false, error: e.message };
      } finally {
        await con.close();
      }
    }),
  );
}
