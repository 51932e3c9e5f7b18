import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { FleetAdminClient, type RolloutAction } from '../fleet/admin-client.js';
import type { DeviceRow, DeviceStatus, MaintenanceWindow, RolloutStage } from '../fleet/store/store.js';
import { parseWindow } from '../fleet/windows.js';
import { durationSeconds } from './duration.js';
import { EdgekitError } from '../util/errors.js';
import { costDetail, deviceDetail, deviceTable, rolloutDetail, rolloutTable, table } from './fleet-format.js';
import { printJson } from './output.js';

const DEFAULT_SERVER = 'http://127.0.0.1:8480';

interface Conn {
  server?: string;
  token?: string;
  tokenFile?: string;
  json?: boolean;
}

/** The server and admin token a command talks to: flags first, then EDGEKIT_FLEET_SERVER / EDGEKIT_FLEET_TOKEN. */
export function clientFrom(o: Conn, env: NodeJS.ProcessEnv = process.env): FleetAdminClient {
  const server = o.server ?? env.EDGEKIT_FLEET_SERVER ?? DEFAULT_SERVER;
  let token = o.token ?? (o.tokenFile ? readOptionFile('--token-file', o.tokenFile) : env.EDGEKIT_FLEET_TOKEN);
  token = token?.trim();
  if (!token) {
    throw new EdgekitError('no admin token: give --token <token>, --token-file <file> (edgekit serve writes <db>.admin-token) or set EDGEKIT_FLEET_TOKEN');
  }
  return new FleetAdminClient(server, token);
}

function readOptionFile(option: string, file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgekitError(`${option} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
}

/** A leaf command: the connection options, and an action that gets the client. */
function leaf(parent: Command, spec: string, description: string): Command {
  return parent
    .command(spec)
    .description(description)
    .option('--server <url>', `fleet server URL (default: $EDGEKIT_FLEET_SERVER or ${DEFAULT_SERVER})`)
    .option('--token <token>', 'admin token (default: $EDGEKIT_FLEET_TOKEN)')
    .option('--token-file <file>', 'read the admin token from a file (e.g. the <db>.admin-token edgekit serve writes)')
    .option('--json', 'machine-readable output (the server\'s answer)');
}

function out(o: Conn, value: unknown, human: () => string): void {
  if (o.json) printJson(value);
  else console.log(human());
}

export function registerFleet(program: Command): void {
  // `rollouts create --version <v>` must reach the command, not the program's own --version.
  program.enablePositionalOptions();
  const fleet = program
    .command('fleet')
    .description('manage a fleet through the fleet server\'s admin API: devices, channels, releases, rollouts')
    .addHelpText('after', `
The server is --server, $EDGEKIT_FLEET_SERVER or ${DEFAULT_SERVER}; the admin token is --token,
--token-file or $EDGEKIT_FLEET_TOKEN (the first one is in <db>.admin-token next to the server's
database). Reading needs a read token, changing things an operator token.

Examples:
  edgekit fleet devices list --status pending
  edgekit fleet devices accept gw-0042
  edgekit fleet devices add gw-0043 --public-key gw-0043.pub --tag site-berlin
  edgekit fleet releases add 1.1 --channel stable
  edgekit fleet rollouts cost --version 1.1 --channel stable
  edgekit fleet rollouts create --version 1.1 --stages 1,10,50,100 --wait 1h --window 'mon-fri 01:00-05:00'
  edgekit fleet rollouts status ro_1a2b3c4d5e6f`);

  registerDevices(fleet);
  registerChannels(fleet);
  registerReleases(fleet);
  registerRollouts(fleet);
}

function registerDevices(fleet: Command): void {
  const devices = fleet.command('devices').description('the device inventory');
  leaf(devices, 'list', 'list devices')
    .option('--status <status>', 'pending, accepted or rejected')
    .option('--channel <channel>', 'only devices following this channel')
    .option('--board <board>', 'only this board')
    .option('--tag <tag>', 'only devices with this tag')
    .action(async (o: Conn & { status?: string; channel?: string; board?: string; tag?: string }) => {
      if (o.status && !['pending', 'accepted', 'rejected'].includes(o.status)) throw new EdgekitError(`--status: pending, accepted or rejected, not ${o.status}`);
      const list = await clientFrom(o).listDevices({ status: o.status as DeviceStatus | undefined, channel: o.channel, board: o.board, tag: o.tag });
      out(o, list, () => deviceTable(list));
    });
  leaf(devices, 'show <device>', 'one device: inventory, slot state and its latest reports')
    .option('--reports <n>', 'how many of the latest reports to show', '20')
    .action(async (id: string, o: Conn & { reports: string }) => {
      const n = positiveInt(o.reports, '--reports', 10_000);
      const c = clientFrom(o);
      // One after the other: for an unknown device the error is always the device request's, not
      // whichever of two concurrent requests failed first.
      const device = await c.device(id);
      const reports = await c.deviceReports(id, n);
      out(o, { ...device, reports }, () => deviceDetail(device, reports));
    });
  leaf(devices, 'add <device>', 'register a device by its public key (`edgekit identity` on the device prints it): accepted at its first handshake')
    .requiredOption('--public-key <file>', 'the device\'s public key (SPKI PEM)')
    .option('--channel <channel>', 'the channel it follows', 'stable')
    .option('--tag <tag>', 'a tag (repeat for several)', collect)
    .action(async (id: string, o: Conn & { publicKey: string; channel: string; tag?: string[] }) => {
      const d = await clientFrom(o).registerDevice({ id, publicKey: readOptionFile('--public-key', o.publicKey), channel: o.channel, tags: o.tag ?? [] });
      out(o, d, () => `registered ${d.id} (channel ${d.channel}${d.tags.length ? `, tags ${d.tags.join(', ')}` : ''}): accepted at its first handshake`);
    });
  leaf(devices, 'set-key <device>', 'replace a device\'s key (it lost its key, the board was replaced, the key leaked): tokens issued before are refused')
    .requiredOption('--public-key <file>', 'the device\'s new public key (SPKI PEM)')
    .action(async (id: string, o: Conn & { publicKey: string }) => {
      const d = await clientFrom(o).setDeviceKey(id, readOptionFile('--public-key', o.publicKey));
      out(o, d, () => `${d.id}: key replaced (status ${d.status})`);
    });
  leaf(devices, 'accept <device...>', 'accept devices waiting for an operator (they can then authenticate)')
    .action(async (ids: string[], o: Conn) => {
      const c = clientFrom(o);
      const done: DeviceRow[] = [];
      for (const id of ids) done.push(await c.acceptDevice(id));
      out(o, done, () => done.map((d) => `accepted ${d.id}`).join('\n'));
    });
  leaf(devices, 'revoke <device...>', 'revoke devices: their key no longer authenticates and they are offered nothing')
    .action(async (ids: string[], o: Conn) => {
      const c = clientFrom(o);
      const done: DeviceRow[] = [];
      for (const id of ids) done.push(await c.revokeDevice(id));
      out(o, done, () => done.map((d) => `revoked ${d.id} (status ${d.status})`).join('\n'));
    });
  leaf(devices, 'tag <device> [tag...]', 'add tags to a device (rollouts can target tags)')
    .option('--remove', 'remove these tags instead')
    .option('--replace', 'make these the device\'s only tags (none: clear them)')
    .action(async (id: string, tags: string[], o: Conn & { remove?: boolean; replace?: boolean }) => {
      if (o.remove && o.replace) throw new EdgekitError('give --remove or --replace, not both');
      if (!tags.length && !o.replace) throw new EdgekitError('devices tag: name the tags to add (or --remove them; --replace with none clears them)');
      const c = clientFrom(o);
      const now = o.replace ? [] : (await c.device(id)).tags;
      const next = o.remove ? now.filter((t) => !tags.includes(t)) : [...new Set([...now, ...tags])];
      const d = await c.setDeviceTags(id, next);
      out(o, d, () => `${d.id}: tags ${d.tags.join(', ') || '(none)'}`);
    });
}

function registerChannels(fleet: Command): void {
  const channels = fleet.command('channels').description('release channels (a device follows one)');
  leaf(channels, 'list', 'channels with their releases and how many devices follow each')
    .action(async (o: Conn) => {
      const c = clientFrom(o);
      const [list, releases, devices] = await Promise.all([c.listChannels(), c.listReleases(), c.listDevices()]);
      const rows = list.map((ch) => ({
        ...ch,
        releases: releases.filter((r) => r.channel === ch.name).map((r) => r.version),
        devices: devices.filter((d) => d.channel === ch.name).length,
      }));
      out(o, rows, () => table(['CHANNEL', 'DEVICES', 'RELEASES'], rows.map((r) => [r.name, r.devices, r.releases.join(', ') || '-'])));
    });
  leaf(channels, 'create <name>', 'create a channel')
    .action(async (name: string, o: Conn) => {
      const r = await clientFrom(o).createChannel(name);
      out(o, r, () => `created channel ${r.name}`);
    });
  leaf(channels, 'set <channel> <device...>', 'move devices to a channel (they then follow its rollouts)')
    .action(async (channel: string, ids: string[], o: Conn) => {
      const c = clientFrom(o);
      const done: DeviceRow[] = [];
      for (const id of ids) done.push(await c.setDeviceChannel(id, channel));
      out(o, done, () => done.map((d) => `${d.id} now follows channel ${d.channel}`).join('\n'));
    });
}

function registerReleases(fleet: Command): void {
  const releases = fleet.command('releases').description('the releases the server knows, per channel');
  leaf(releases, 'list', 'list releases')
    .option('--channel <channel>', 'only this channel')
    .action(async (o: Conn & { channel?: string }) => {
      const list = await clientFrom(o).listReleases(o.channel);
      out(o, list, () => (list.length ? table(['CHANNEL', 'VERSION', 'BOARD', 'ADDED'], list.map((r) => [r.channel, r.version, r.board ?? 'any', new Date(r.createdAt).toISOString()])) : 'no releases'));
    });
  leaf(releases, 'add <version>', 'make a published release available to a channel\'s rollouts')
    .option('--channel <channel>', 'the channel', 'stable')
    .option('--board <board>', 'for this board only')
    .action(async (version: string, o: Conn & { channel: string; board?: string }) => {
      const r = await clientFrom(o).addRelease({ version, channel: o.channel, ...(o.board ? { board: o.board } : {}) });
      out(o, r, () => `added release ${r.version} to channel ${r.channel}${r.board ? ` (board ${r.board})` : ''}`);
    });
  leaf(releases, 'remove <version>', 'take a release off a channel\'s list (refused while a running or paused rollout offers it)')
    .option('--channel <channel>', 'the channel', 'stable')
    .action(async (version: string, o: Conn & { channel: string }) => {
      const r = await clientFrom(o).removeRelease(version, o.channel);
      out(o, r, () => `removed release ${version} from channel ${o.channel}`);
    });
}

interface CreateOpts extends Conn {
  version?: string;
  channel: string;
  stages: string;
  wait?: string;
  tag?: string[];
  board?: string;
  maxFailureRatio?: string;
  minSuccessRatio?: string;
  window?: string[];
}

function registerRollouts(fleet: Command): void {
  const rollouts = fleet.command('rollouts').description('staged rollouts: create, watch, pause, resume, abort, and what they cost');
  leaf(rollouts, 'list', 'list rollouts')
    .action(async (o: Conn) => {
      const list = await clientFrom(o).listRollouts();
      out(o, list, () => rolloutTable(list));
    });
  leaf(rollouts, 'create', 'start a staged rollout of a release to a channel')
    .option('--version <version>', 'the release (added to the channel with releases add)')
    .option('--channel <channel>', 'the channel', 'stable')
    .option('--stages <list>', 'percent of the matching devices per stage, each optionally with the wait before it opens: 1,10:1h,50:1d,100', '100')
    .option('--wait <duration>', 'wait before each stage after the first opens, unless the stage says (30s, 10m, 2h, 1d)')
    .option('--tag <tag>', 'only devices with this tag (repeat: all of them)', collect)
    .option('--board <board>', 'only this board')
    .option('--max-failure-ratio <r>', 'pause by itself when failed / devices of the open stages exceeds this (default 0.05)')
    .option('--min-success-ratio <r>', 'open the next stage only once succeeded / devices reaches this (default 0.9)')
    .option('--window <window>', 'maintenance window, [DAYS ]HH:MM-HH:MM[ ZONE], e.g. "mon-fri 01:00-05:00" (UTC) or "sat,sun 02:00-05:00 Europe/Berlin" (repeat for several; none: any time)', collect)
    .addHelpText('after', `
Devices are offered the release only inside a window; one that started its update outside it still
finishes. A window ending before it starts runs past midnight ("fri 22:00-02:00" includes Saturday
01:00). Days: sun mon tue wed thu fri sat, ranges (mon-fri) and lists (sat,sun). ZONE is an IANA
time zone (Europe/Berlin, America/New_York); the window follows its daylight saving time. Without
one the window is UTC.`)
    .action(async (o: CreateOpts) => {
      if (!o.version) throw new EdgekitError('rollouts create: --version is required');
      const tags = o.tag ?? [];
      const windows = (o.window ?? []).map(windowOption);
      const body = {
        version: o.version,
        channel: o.channel,
        ...filterOf(tags, o.board),
        stages: parseStages(o.stages, o.wait),
        ...(o.maxFailureRatio !== undefined ? { maxFailureRatio: ratio(o.maxFailureRatio, '--max-failure-ratio') } : {}),
        ...(o.minSuccessRatio !== undefined ? { minSuccessRatio: ratio(o.minSuccessRatio, '--min-success-ratio') } : {}),
        ...(windows.length ? { windows } : {}),
      };
      const r = await clientFrom(o).createRollout(body);
      out(o, r, () => `created rollout ${r.id}: ${r.version} to channel ${r.channel}, ${r.stages.map((s) => `${s.percent}%`).join(' -> ')}`);
    });
  leaf(rollouts, 'status [rollout]', 'one rollout stage by stage (failure ratio, progress); without an id, all rollouts')
    .action(async (id: string | undefined, o: Conn) => {
      const c = clientFrom(o);
      if (!id) {
        const list = await c.listRollouts();
        return out(o, list, () => rolloutTable(list));
      }
      // One after the other, like devices show: an unknown rollout's error names the rollout request.
      const r = await c.rollout(id);
      const p = await c.rolloutProgress(id);
      out(o, { ...r, progress: p }, () => rolloutDetail(r, p));
    });
  for (const [action, what] of [
    ['pause', 'stop offering the release (devices that started finish)'],
    ['resume', 'offer the release again (pauses again at once if the failure ratio is still over the limit)'],
    ['abort', 'end the rollout: devices that have not started stay where they are'],
  ] as Array<[RolloutAction, string]>) {
    leaf(rollouts, `${action} <rollout>`, what).action(async (id: string, o: Conn) => {
      const r = await clientFrom(o).setRolloutState(id, action);
      out(o, r, () => `rollout ${r.id} is ${r.state}${r.reason ? ` (${r.reason})` : ''}`);
    });
  }
  leaf(rollouts, 'cost [rollout]', 'bytes a rollout downloads, per cohort of current versions (an existing rollout: what it has left)')
    .option('--version <version>', 'the release, for a rollout not created yet')
    .option('--channel <channel>', 'the channel, for a rollout not created yet', 'stable')
    .option('--tag <tag>', 'only devices with this tag (repeat: all of them)', collect)
    .option('--board <board>', 'only this board')
    .addHelpText('after', `
Per device: the kernel, the initramfs and either the delta from the version it runs (when the
release repository has one) or the full root payload, with the lengths in the repository's signed
targets metadata. Needs a server started with --repo.`)
    .action(async (id: string | undefined, o: Conn & { version?: string; channel: string; tag?: string[]; board?: string }) => {
      if (id && o.version) throw new EdgekitError('give a rollout id or --version, not both');
      if (!id && !o.version) throw new EdgekitError('rollouts cost: give a rollout id, or --version (and --channel, --tag, --board) for one not created yet');
      const c = clientFrom(o);
      const cost = id
        ? await c.rolloutCost(id)
        : await c.costOf({ version: o.version!, channel: o.channel, ...filterOf(o.tag ?? [], o.board) });
      out(o, cost, () => costDetail(cost));
    });
}

function filterOf(tags: string[], board: string | undefined): { filter?: { tags?: string[]; board?: string } } {
  if (!tags.length && !board) return {};
  return { filter: { ...(tags.length ? { tags } : {}), ...(board ? { board } : {}) } };
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

function positiveInt(v: string, flag: string, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new EdgekitError(`${flag}: a whole number 1-${max}, not ${v}`);
  return n;
}

function ratio(v: string, flag: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new EdgekitError(`${flag}: a ratio from 0 to 1 (e.g. 0.05), not ${v}`);
  return n;
}

function windowOption(v: string): MaintenanceWindow {
  try {
    return parseWindow(v);
  } catch (err) {
    throw new EdgekitError(`--window ${(err as Error).message}`);
  }
}

/** '1,10:1h,50,100' with --wait 2h -> stages; the first stage opens at once unless it names a wait. */
export function parseStages(list: string, wait?: string): RolloutStage[] {
  const defaultWait = wait === undefined ? 0 : durationSeconds(wait, '--wait');
  return list.split(',').map((part, i) => {
    const [p, w] = part.split(':');
    const percent = Number(p);
    if (p.trim() === '' || !Number.isFinite(percent) || percent <= 0 || percent > 100) {
      throw new EdgekitError(`--stages: stage ${i + 1} "${part}": a percent in (0, 100], optionally :wait (e.g. 10:1h)`);
    }
    return { percent, waitSeconds: w !== undefined ? durationSeconds(w, `--stages (stage ${i + 1})`) : i === 0 ? 0 : defaultWait };
  });
}
