import type { Command } from 'commander';
import { publishRelease, republishRelease, withdrawRelease, type Release } from '../ota/repo/index.js';
import { EdgekitError } from '../util/errors.js';
import { printJson } from './output.js';
import { nowOption, registerRepo } from './repo.js';

interface ReleaseOpts {
  repo: string;
  version: string;
  channel?: string;
  keys: string;
  republish?: string;
  deltaFrom?: string[];
  name?: string;
  board?: string;
  now?: string;
  json?: boolean;
}

/** Registers `release` and its companion `repo` (one entry point keeps main.ts to one line). */
export function registerRelease(program: Command): void {
  // `release --version <v>` must reach this command, not the program's own -V/--version, which
  // commander otherwise recognises anywhere on the line.
  program.enablePositionalOptions();
  registerRepo(program);
  const release = program
    .command('release')
    .argument('[image]', 'a built .img (its embedded manifest says what goes into the release)')
    .description('publish a built image as a signed release; --republish <old> rolls a fleet back under a new version')
    // Checked in the action: commander would demand a parent's required options from `withdraw` too.
    .option('--repo <dir>', 'the release repository (edgekit repo init)')
    .option('--keys <dir>', 'role keys (targets, snapshot, timestamp)')
    .option('--version <v>', 'release version; higher than every release in the channel')
    .option('--channel <c>', 'release channel', 'stable')
    .option('--delta-from <versions...>', 'also publish root deltas from these earlier releases (devices on them download only what changed)')
    .option('--republish <old-version>', 'publish the files of release <old-version> again as --version')
    .option('--name <name>', 'with --republish: the image name, when several share the old version')
    .option('--board <board>', 'with --republish: the board, when several share the old version')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--json', 'machine-readable output')
    .action(async (image: string | undefined, o: ReleaseOpts, cmd: Command) => {
      for (const flag of ['repo', 'keys', 'version'] as const) if (!o[flag]) throw new EdgekitError(`release: --${flag} is required`);
      const channelGiven = cmd.getOptionValueSource('channel') === 'cli';
      let r: Release;
      if (o.republish) {
        if (image) throw new EdgekitError(`give either an image or --republish ${o.republish}, not both`);
        if (o.deltaFrom) throw new EdgekitError('--delta-from makes deltas for a new image; a republished release reuses old files');
        r = await republishRelease({ repo: o.repo, from: o.republish, version: o.version, channel: channelGiven ? o.channel : undefined, name: o.name, board: o.board, keys: o.keys, now: nowOption(o.now) });
      } else {
        if (!image) throw new EdgekitError('release: name the built image to publish (or --republish <old-version>)');
        r = await publishRelease({
          image, repo: o.repo, version: o.version, channel: o.channel, keys: o.keys, now: nowOption(o.now), deltaFrom: o.deltaFrom,
          onDelta: (from, d) => {
            if (!o.json) console.error(`delta from ${from}: ${d.bytes} bytes (${d.changedFiles} files diffed, ${d.copiedBytes} bytes copied from the running slot)`);
          },
        });
      }
      if (o.json) printJson(r);
      else {
        const c = r.custom;
        console.log(`published ${c.name} ${c.version} for ${c.board} in channel ${c.channel}${c.republishedFrom ? ` (the files of ${c.republishedFrom})` : ''}`);
        for (const f of r.files) console.log(`  ${f.path} ${f.length} bytes sha256 ${f.sha256.slice(0, 16)}`);
      }
    });
  release
    .command('withdraw <version>')
    .description('remove a release from its channel (new targets, snapshot and timestamp)')
    .requiredOption('--repo <dir>', 'the release repository')
    .requiredOption('--keys <dir>', 'role keys (targets, snapshot, timestamp)')
    .option('--channel <c>', 'only in this channel')
    .option('--name <name>', 'only this image')
    .option('--board <board>', 'only this board')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--json', 'machine-readable output')
    .action(async (version: string, o: Omit<ReleaseOpts, 'version'>) => {
      const gone = await withdrawRelease({ repo: o.repo, version, channel: o.channel, name: o.name, board: o.board, keys: o.keys, now: nowOption(o.now) });
      if (o.json) printJson(gone);
      else for (const r of gone) console.log(`withdrew ${r.custom.name} ${r.custom.version} for ${r.custom.board} from channel ${r.custom.channel}`);
    });
}
