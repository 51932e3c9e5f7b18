/**
 * The entry point bundled into the agent overlay (scripts/bundle-agent): only the device-side
 * commands, so the bundle carries none of the builder, flasher or native addons.
 */
import { Command, CommanderError } from 'commander';
import { registerUpdate } from '../../cli/update.js';
import { EdgekitError } from '../../util/errors.js';
import { installLeanFetch } from './lean-fetch.js';

// Before anything fetches: see lean-fetch.ts (memory).
installLeanFetch();

const program = new Command('edgekit').description('edgekit device commands').exitOverride();
registerUpdate(program);
try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exitCode = err.exitCode;
  else if (err instanceof EdgekitError) {
    process.stderr.write(`edgekit: ${err.message}\n`);
    process.exitCode = 1;
  } else throw err;
}
