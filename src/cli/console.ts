/**
 * `edgekit console <port>`: a device's serial console on this terminal (Ctrl-] quits), or, with
 * --expect, a check that a boot marker shows up within --timeout (exit 0 when it does).
 */
import { Writable } from 'node:stream';
import type { Command } from 'commander';
import { ConsoleWaitError, DEFAULT_BAUD, openConsole } from '../flash/console.js';
import { attachTerminal } from '../qemu/terminal.js';
import { EdgekitError } from '../util/errors.js';

interface ConsoleFlags {
  baud: string;
  expect?: string;
  timeout?: string;
  quiet?: boolean;
}

export function registerConsole(program: Command): void {
  program
    .command('console')
    .description("a device's serial console on this terminal (Ctrl-] quits), or wait for a boot marker with --expect")
    .argument('<port>', 'serial device: /dev/ttyUSB0, /dev/ttyACM0, a pty')
    .option('--baud <rate>', 'baud rate', String(DEFAULT_BAUD))
    .option('--expect <regex>', 'exit 0 when the console shows this, non-zero on --timeout')
    .option('--timeout <seconds>', 'with --expect: give up after this many seconds')
    .option('--quiet', 'with --expect: do not copy the console to stdout')
    .action(async (port: string, flags: ConsoleFlags) => {
      const baud = Number(flags.baud);
      if (!Number.isInteger(baud) || baud <= 0) throw new EdgekitError(`--baud ${flags.baud}: expected a positive whole number`);
      if (flags.expect === undefined) {
        if (flags.timeout !== undefined) throw new EdgekitError('--timeout goes with --expect');
        await interactive(port, baud);
        return;
      }
      if (flags.timeout === undefined) throw new EdgekitError('--expect needs --timeout <seconds>');
      await expectMarker(port, baud, parseRegex(flags.expect), parseSeconds(flags.timeout), !flags.quiet);
    });
}

async function expectMarker(port: string, baud: number, re: RegExp, timeoutMs: number, echo: boolean): Promise<void> {
  const con = await openConsole(port, { baud });
  if (echo) con.output.on('data', (chunk) => process.stdout.write(chunk));
  try {
    await con.waitFor(re, timeoutMs);
  } catch (err) {
    // The console was on stdout already (or was asked not to be): one line says what went wrong.
    if (err instanceof ConsoleWaitError) throw new EdgekitError(err.summary);
    throw err;
  } finally {
    await con.close();
  }
  if (echo) process.stdout.write('\n');
  process.stderr.write(`edgekit: ${port}: saw ${re}\n`);
}

async function interactive(port: string, baud: number): Promise<void> {
  const con = await openConsole(port, { baud });
  const toPort = new Writable({
    write(chunk: Buffer, _enc, done) {
      con.write(chunk).then(() => done(), done);
    },
  });
  toPort.on('error', () => {}); // a failed write shows up as the port closing
  let quit = false;
  const stop = () => {
    quit = true;
    void con.close();
  };
  const detach = attachTerminal(con.output, toPort, stop);
  // Without a terminal (a pipe: `echo reboot | edgekit console ...`) attachTerminal leaves stdin alone; copy it as is.
  const piped = !process.stdin.isTTY;
  if (piped) process.stdin.pipe(toPort, { end: false });
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    await con.closed;
  } finally {
    detach();
    // A paused pipe still holds the event loop open; the command is over, so let go of stdin.
    if (piped) process.stdin.unpipe(toPort).destroy();
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  if (!quit) throw new EdgekitError(`${port}: the port closed (device unplugged?)`);
}

function parseSeconds(v: string): number {
  const s = Number(v);
  if (!Number.isFinite(s) || s <= 0) throw new EdgekitError(`--timeout ${v}: expected a positive number of seconds`);
  return Math.round(s * 1000);
}

function parseRegex(v: string): RegExp {
  try {
    return new RegExp(v);
  } catch (err) {
    throw new EdgekitError(`--expect ${v}: not a regular expression (${(err as Error).message})`);
  }
}
