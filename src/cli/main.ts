/**
 * The edgekit command line: a thin layer over the library. Each command lives in its own file and
 * turns options into one library call plus output (human text on a terminal, or --json).
 */
import { Command, CommanderError } from 'commander';
import { EdgekitError } from '../util/errors.js';
import { registerBoards } from './boards.js';
import { registerKeys } from './keys.js';
import { registerBuild } from './build.js';
import { registerVerify } from './verify.js';
import { registerInspect } from './inspect.js';
import { registerRun } from './run.js';
import { resolveEmulationFromImage } from './emulation.js';
import { registerRpiboot } from './rpiboot.js';
import { registerDevices } from './devices.js';
import { registerFlash } from './flash.js';
import { registerConsole } from './console.js';
import { registerRelease } from './release.js';
import { registerUpdate } from './update.js';

export function program(): Command {
  const p = new Command('edgekit')
    .description('Build, flash and update the operating system of edge and IoT devices')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  registerBoards(p);
  registerKeys(p);
  registerBuild(p);
  registerVerify(p);
  registerInspect(p);
  registerRun(p, resolveEmulationFromImage);
  registerRpiboot(p);
  registerDevices(p);
  registerFlash(p);
  registerConsole(p);
  registerRelease(p);
  registerUpdate(p);
  return p;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    if (err instanceof EdgekitError) {
      process.stderr.write(`edgekit: ${err.message}\n`);
      process.exitCode = err.exitCode || 1;
      return;
    }
    throw err;
  }
}
