/**
 * The edgekit command line: a thin layer over the library. Each command lives in its own file and
 * turns options into one library call plus output (human text on a terminal, or --json).
 */
import { Command, CommanderError } from 'commander';
import { EdgekitError } from '../util/errors.js';
type Register = (program: Command) => void;

/**
 * Each command's module, loaded only when that command runs: loading every command (QEMU, USB,
 * serial ports, TUF, the builder) costs most of a second, which a bench tool run 20 times a tray
 * should not pay. `edgekit --help` and unknown commands load them all, `--version` none.
 */
const COMMANDS: Array<{ names: string[]; load: () => Promise<Register> }> = [
  { names: ['boards'], load: async () => (await import('./boards.js')).registerBoards },
  { names: ['keys'], load: async () => (await import('./keys.js')).registerKeys },
  { names: ['build'], load: async () => (await import('./build.js')).registerBuild },
  { names: ['verify'], load: async () => (await import('./verify.js')).registerVerify },
  { names: ['inspect'], load: async () => (await import('./inspect.js')).registerInspect },
  {
    names: ['run'],
    load: async () => {
      const [{ registerRun }, { resolveEmulationFromImage }] = await Promise.all([import('./run.js'), import('./emulation.js')]);
      return (p) => registerRun(p, resolveEmulationFromImage);
    },
  },
  { names: ['rpiboot'], load: async () => (await import('./rpiboot.js')).registerRpiboot },
  { names: ['devices'], load: async () => (await import('./devices.js')).registerDevices },
  { names: ['flash'], load: async () => (await import('./flash.js')).registerFlash },
  { names: ['console'], load: async () => (await import('./console.js')).registerConsole },
  { names: ['release', 'repo'], load: async () => (await import('./release.js')).registerRelease },
  { names: ['update', 'agent', 'identity'], load: async () => (await import('./update.js')).registerUpdate },
  { names: ['serve'], load: async () => (await import('./serve.js')).registerServe },
  { names: ['fleet'], load: async () => (await import('./fleet.js')).registerFleet },
];

/** The program with the commands `argv` needs (all of them when it names none we know). */
export async function program(argv: string[] = []): Promise<Command> {
  const p = new Command('edgekit')
    .description('Build, flash and update the operating system of edge and IoT devices')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  const first = argv[2] ?? '';
  // The version needs no command; help and unknown commands need them all.
  if (first === '--version' || first === '-V') return p;
  const named = COMMANDS.filter((c) => c.names.includes(first));
  for (const c of named.length ? named : COMMANDS) (await c.load())(p);
  return p;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await (await program(argv)).parseAsync(argv);
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
