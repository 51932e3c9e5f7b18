import type { Command } from 'commander';
import { publishRelease, republishRelease, withdrawRelease, type Release } from '../ota/repo/index.js';
import type { DeltaInfo } from '../ota/delta/make.js';
import type { RemoteRelease } from '../fleet/remote-publish.js';
import { EdgekitError } from '../util/errors.js';
import { printJson } from './output.js';
import { nowOption, registerRepo } from './repo.js';
import { FleetAdminError, type FleetAdminClient } from '../fleet/admin-client.js';

interface ReleaseOpts {
  repo?: string;
  version: string;
  channel?: string;
  keys: string;
  republish?: string;
  deltaFrom?: string[];
  name?: string;
  board?: string;
  now?: string;
  json?: boolean;
  fleet?: string;
  fleetTokenFile?: string;
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
    .option('--repo <dir>', 'the release repository (edgekit repo init); without it, --fleet publishes to the server\'s repository over HTTP')
    .option('--keys <dir>', 'role keys (targets, snapshot, timestamp; without --repo: targets and a root public key only)')
    .option('--version <v>', 'release version; higher than every release in the channel')
    .option('--channel <c>', 'release channel', 'stable')
    .option('--delta-from <versions...>', 'also publish root deltas from these earlier releases (devices on them download only what changed)')
    .option('--republish <old-version>', 'publish the files of release <old-version> again as --version')
    .option('--name <name>', 'with --republish: the image name, when several share the old version')
    .option('--board <board>', 'with --republish: the board, when several share the old version')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--fleet <url>', 'add the release to this fleet server\'s channel; without --repo, first upload it to the server (started with --repo and --online-keys), which signs snapshot and timestamp')
    .option('--fleet-token-file <file>', 'with --fleet: an operator admin token (default: $EDGEKIT_FLEET_TOKEN)')
    .option('--json', 'machine-readable output')
    .addHelpText('after', `
Publishing to a fleet server over HTTP (no --repo): the server's current metadata is fetched and
checked against a root key in --keys (its .pub will do), the release is signed here with the
targets key only, the files the server lacks are
uploaded (progress on stderr), then the signed targets metadata; the server writes snapshot and
timestamp with its online keys and the release is added to the channel.

Examples:
  edgekit release out/gateway-qemu-x86_64.img --repo repo --keys keys --version 1.1 --delta-from 1.0
  edgekit release out/gateway-qemu-x86_64.img --fleet https://fleet.example:8480 --keys keys \\
      --fleet-token-file operator.token --version 1.1 --delta-from 1.0`)
    .action(async (image: string | undefined, o: ReleaseOpts, cmd: Command) => {
      if (!o.repo && !o.fleet) throw new EdgekitError('release: --repo <dir> is required (or --fleet <url> to publish to a fleet server\'s repository)');
      for (const flag of ['keys', 'version'] as const) if (!o[flag]) throw new EdgekitError(`release: --${flag} is required`);
      if (o.fleetTokenFile && !o.fleet) throw new EdgekitError('--fleet-token-file needs --fleet <url>');
      const remote = !o.repo;
      // Asked before anything is signed: a wrong server or token must not leave a release the server never hears of.
      const fleet = o.fleet ? await fleetFor(o.fleet, o.fleetTokenFile) : undefined;
      const channelGiven = cmd.getOptionValueSource('channel') === 'cli';
      const onDelta = (from: string, d: DeltaInfo) => {
        if (!o.json) console.error(`delta from ${from}: ${d.bytes} bytes (${d.changedFiles} files diffed, ${d.copiedBytes} bytes copied from the running slot)`);
      };
      let r: Release | RemoteRelease;
      if (o.republish) {
        if (image) throw new EdgekitError(`give either an image or --republish ${o.republish}, not both`);
        if (o.deltaFrom) throw new EdgekitError('--delta-from makes deltas for a new image; a republished release reuses old files');
        const common = { from: o.republish, version: o.version, channel: channelGiven ? o.channel : undefined, name: o.name, board: o.board, keys: o.keys, now: nowOption(o.now) };
        if (remote) {
          const { republishRemote } = await import('../fleet/remote-publish.js');
          r = await republishRemote({ ...common, client: fleet! });
        } else {
          r = await republishRelease({ ...common, repo: o.repo! });
        }
      } else {
        if (!image) throw new EdgekitError('release: name the built image to publish (or --republish <old-version>)');
        const common = { image, version: o.version, channel: o.channel, keys: o.keys, now: nowOption(o.now), deltaFrom: o.deltaFrom, onDelta };
        if (remote) {
          const { publishRemote } = await import('../fleet/remote-publish.js');
          // Progress goes to stderr (always: uploads of big payloads take a while), results to stdout.
          r = await publishRemote({ ...common, client: fleet!, onProgress: (line) => console.error(line) });
        } else {
          r = await publishRelease({ ...common, repo: o.repo! });
        }
      }
      const c = r.custom;
      const where = remote ? `the repository of ${o.fleet}` : o.repo;
      let added = false;
      if (fleet) {
        try {
          await fleet.addRelease({ version: c.version, channel: c.channel, board: c.board });
          added = true;
        } catch (err) {
          throw new EdgekitError(`published ${c.version} in ${where}, but ${o.fleet} did not take it into channel ${c.channel}: ${(err as Error).message}; add it with: edgekit fleet releases add ${c.version} --channel ${c.channel} --board ${c.board}`);
        }
      }
      if (o.json) printJson(fleet ? { ...r, fleet: { server: o.fleet, added } } : r);
      else {
        console.log(`published ${c.name} ${c.version} for ${c.board} in channel ${c.channel}${c.republishedFrom ? ` (the files of ${c.republishedFrom})` : ''}${remote ? ` in ${where}` : ''}`);
        for (const f of r.files) console.log(`  ${f.path} ${f.length} bytes sha256 ${f.sha256.slice(0, 16)}`);
        if ('server' in r) {
          console.log(`sent ${r.server.uploaded.length} files (${r.server.present.length} were there already); the server signed targets version ${r.server.targetsVersion} into timestamp version ${r.server.timestampVersion}`);
        }
        if (added) console.log(`added to channel ${c.channel} on ${o.fleet}: start a rollout with edgekit fleet rollouts create --version ${c.version} --channel ${c.channel}`);
      }
    });
  release
    .command('withdraw <version>')
    .description('remove a release from its channel (new targets, snapshot and timestamp)')
    .option('--repo <dir>', 'the release repository')
    .option('--keys <dir>', 'role keys (targets, snapshot, timestamp; targets and a root public key with --fleet)')
    .option('--fleet <url>', 'without --repo: withdraw it from this fleet server\'s repository (the server signs snapshot and timestamp)')
    .option('--fleet-token-file <file>', 'with --fleet: an operator admin token (default: $EDGEKIT_FLEET_TOKEN)')
    .option('--channel <c>', 'only in this channel')
    .option('--name <name>', 'only this image')
    .option('--board <board>', 'only this board')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--json', 'machine-readable output')
    .action(async (version: string, o: Omit<ReleaseOpts, 'version'>) => {
      if (!o.repo === !o.fleet) throw new EdgekitError('release withdraw: give --repo <dir>, or --fleet <url> for a fleet server\'s repository');
      if (!o.keys) throw new EdgekitError('release withdraw: --keys is required');
      if (o.fleetTokenFile && !o.fleet) throw new EdgekitError('--fleet-token-file needs --fleet <url>');
      const common = { version, channel: o.channel, name: o.name, board: o.board, keys: o.keys, now: nowOption(o.now) };
      let gone: Release[];
      if (o.fleet) {
        const client = await fleetFor(o.fleet, o.fleetTokenFile);
        const { withdrawRemote } = await import('../fleet/remote-publish.js');
        const r = await withdrawRemote({ ...common, client });
        gone = r.withdrawn;
        // Off the server's channel lists too (a release never added there is fine).
        for (const g of gone) {
          await client.removeRelease(g.custom.version, g.custom.channel).catch((err: Error) => {
            if (err instanceof FleetAdminError && err.status === 404) return;
            throw new EdgekitError(`withdrew ${g.custom.version} from the repository, but ${o.fleet} kept it in channel ${g.custom.channel}: ${err.message}`);
          });
        }
        if (o.json) return printJson({ withdrawn: gone, server: r.server });
      } else {
        gone = await withdrawRelease({ ...common, repo: o.repo! });
        if (o.json) return printJson(gone);
      }
      for (const r of gone) console.log(`withdrew ${r.custom.name} ${r.custom.version} for ${r.custom.board} from channel ${r.custom.channel}`);
    });
}

/** The fleet server `release --fleet` adds the release to, once its token is known to carry operator scope. */
async function fleetFor(server: string, tokenFile: string | undefined): Promise<FleetAdminClient> {
  if (!tokenFile && !process.env.EDGEKIT_FLEET_TOKEN) throw new EdgekitError(`--fleet ${server}: no admin token: give --fleet-token-file <file> or set EDGEKIT_FLEET_TOKEN`);
  const { clientFrom } = await import('./fleet.js');
  const client = clientFrom({ server, tokenFile });
  const who = await client.whoami().catch((err: Error) => {
    throw new EdgekitError(`--fleet ${server}: ${err.message}`);
  });
  if (who.scope === 'read') throw new EdgekitError(`--fleet ${server}: token ${who.tokenId} is read-only; publishing or adding a release needs an operator token`);
  return client;
}
