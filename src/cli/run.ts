/**
 * `edgekit run <image>`: boot an image under QEMU with its console on this terminal (or a pty),
 * optionally succeeding only when a console marker shows up.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { EdgekitError } from '../util/errors.js';
import { loadBoard } from '../spec/board.js';
import type { EmulationSettings, HostForward } from '../qemu/args.js';
import { emulationFromBoard } from '../qemu/board.js';
import { runImage } from '../qemu/run-image.js';

/** How QEMU should run an image, as far as the image itself tells (its manifest); undefined if it can't tell. */
export type ResolveEmulation = (imagePath: string) => Promise<EmulationSettings | undefined>;

interface RunFlags {
  board?: string;
  arch?: string;
  expect?: string;
  timeout?: string;
  memory?: string;
  forward?: string[];
  pty?: boolean;
  snapshot: boolean;
}

export function registerRun(program: Command, resolveEmulation?: ResolveEmulation): void {
  program
    .command('run')
    .description('boot an image under QEMU (software emulation) with its serial console on this terminal')
    .argument('<image>', 'raw disk image')
    .option('--board <id>', 'board whose emulation settings to use (boards/<id>.yml)')
    .option('--arch <arch>', 'x86_64 or aarch64, when neither the image nor --board tells')
    .option('--expect <regex>', 'succeed when the console shows this, fail on --timeout')
    .option('--timeout <seconds>', 'give up after this many seconds')
    .option('--memory <MiB>', 'guest memory')
    .option('--forward <host:guest...>', 'forward TCP port host (on 127.0.0.1) to guest')
    .option('--pty', 'put the console on a pseudo-terminal and print its path (open it at once)')
    .option('--no-snapshot', 'write guest changes back to the image (default: keep the image unchanged)')
    .action(async (image: string, flags: RunFlags) => {
      const imagePath = resolve(image);
      if (!existsSync(imagePath)) throw new EdgekitError(`image not found: ${image}`);
      const emulation = await emulationFor(imagePath, flags, resolveEmulation);
      const timeoutMs = flags.timeout === undefined ? undefined : parseSeconds(flags.timeout);
      const expect = flags.expect === undefined ? undefined : parseRegex(flags.expect);
      if (expect && timeoutMs === undefined) throw new EdgekitError('--expect needs --timeout <seconds>');
      const forwards = (flags.forward ?? []).map(parseForward);
      const result = await runImage({
        ...emulation,
        firmware: emulation.firmware ?? 'uefi',
        memoryMiB: flags.memory === undefined ? emulation.memoryMiB : parsePositiveInt(flags.memory, '--memory'),
        image: imagePath,
        snapshot: flags.snapshot,
        net: { user: true, hostForwards: forwards },
        expect,
        timeoutMs,
        echo: !flags.pty,
        pty: flags.pty,
        onStart: (session) => {
          if (session.ptyPath) process.stdout.write(`${session.ptyPath}\n`);
        },
      });
      if (result.matched !== undefined) process.stderr.write(`\nedgekit: console showed ${expect}: ${JSON.stringify(result.matched)}\n`);
    });
}

/** Flags beat the board, the board beats what the image says. */
async function emulationFor(
  imagePath: string,
  flags: RunFlags,
  resolveEmulation: ResolveEmulation | undefined,
): Promise<EmulationSettings> {
  let base: EmulationSettings | undefined;
  if (flags.board) {
    base = emulationFromBoard(loadBoard(flags.board).value);
    if (!base) throw new EdgekitError(`board ${flags.board} has no emulation.qemu section: it cannot run under QEMU`);
  } else if (resolveEmulation) {
    base = await resolveEmulation(imagePath);
  }
  if (flags.arch !== undefined) {
    if (flags.arch !== 'x86_64' && flags.arch !== 'aarch64') {
      throw new EdgekitError(`--arch ${flags.arch}: expected x86_64 or aarch64`);
    }
    if (base && base.arch !== flags.arch) {
      // The machine and CPU of another architecture would not fit: keep only what is arch-neutral.
      base = { arch: flags.arch, memoryMiB: base.memoryMiB, firmware: base.firmware };
    }
    base = { ...base, arch: flags.arch };
  }
  if (!base) throw new EdgekitError(`cannot tell which machine runs ${imagePath}: pass --board <id> or --arch x86_64|aarch64`);
  return base;
}

function parseSeconds(v: string): number {
  const s = Number(v);
  if (!Number.isFinite(s) || s <= 0) throw new EdgekitError(`--timeout ${v}: expected a positive number of seconds`);
  return Math.round(s * 1000);
}

function parsePositiveInt(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new EdgekitError(`${flag} ${v}: expected a positive whole number`);
  return n;
}

function parseRegex(v: string): RegExp {
  try {
    return new RegExp(v);
  } catch (err) {
    throw new EdgekitError(`--expect ${v}: not a regular expression (${(err as Error).message})`);
  }
}

function parseForward(v: string): HostForward {
  const m = /^(\d+):(\d+)$/.exec(v);
  if (!m) throw new EdgekitError(`--forward ${v}: expected <host port>:<guest port>, e.g. 2222:22`);
  return { hostPort: Number(m[1]), guestPort: Number(m[2]) };
}
