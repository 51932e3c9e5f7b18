import type { Command } from 'commander';
import { describeRepo, initRepo, listReleases, refreshMetadata, rotateRoot, type RepoSummary, type RoleKeyCount } from '../ota/repo/index.js';
import type { RoleName } from '../ota/repo/layout.js';
import { EdgekitError } from '../util/errors.js';
import { printJson } from './output.js';

const DAY = 86400;

export function registerRepo(program: Command): void {
  const repo = program.command('repo').description('signed release repositories (TUF): keys, root rotation, re-signing');
  repo
    .command('init <dir>')
    .description('create an empty release repository and its role keys (root and targets stay offline; snapshot and timestamp go to the fleet server)')
    .requiredOption('--keys <dir>', 'folder for the role keys (existing keys there are used)')
    .option('--root-keys <n>', 'number of root keys', '1')
    .option('--root-threshold <n>', 'root signatures needed', '1')
    .option('--targets-keys <n>', 'number of targets keys', '1')
    .option('--targets-threshold <n>', 'targets signatures needed', '1')
    .option('--timestamp-days <n>', 'days a timestamp stays valid', '1')
    .option('--snapshot-days <n>', 'days a snapshot stays valid', '7')
    .option('--targets-days <n>', 'days targets metadata stays valid', '90')
    .option('--root-days <n>', 'days root metadata stays valid', '365')
    .option('--now <time>', 'sign as of this ISO time instead of the clock (for tests and re-creatable repositories)')
    .option('--json', 'machine-readable output')
    .action(async (dir: string, o: Record<string, string | boolean | undefined>) => {
      const r = await initRepo({
        repo: dir,
        keys: String(o.keys),
        roles: { root: count(o, 'root'), targets: count(o, 'targets') },
        expires: {
          timestamp: int(o.timestampDays, '--timestamp-days') * DAY,
          snapshot: int(o.snapshotDays, '--snapshot-days') * DAY,
          targets: int(o.targetsDays, '--targets-days') * DAY,
          root: int(o.rootDays, '--root-days') * DAY,
        },
        now: nowOption(o.now),
      });
      show(r, o.json === true);
    });
  repo
    .command('rotate-root <dir>')
    .description('sign a new root version (old and new root keys sign it); optionally replace role keys')
    .requiredOption('--keys <dir>', 'the role keys folder (replaced keys move to <dir>/retired/)')
    .option('--replace <roles>', 'comma-separated roles whose keys are replaced: root,targets,snapshot,timestamp')
    .option('--root-keys <n>', 'number of new root keys (with --replace root)')
    .option('--root-threshold <n>', 'root signatures needed from now on')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--json', 'machine-readable output')
    .action(async (dir: string, o: Record<string, string | boolean | undefined>) => {
      const replace = o.replace ? String(o.replace).split(',').map((r) => r.trim()) : [];
      for (const r of replace) if (!['root', 'targets', 'snapshot', 'timestamp'].includes(r)) throw new EdgekitError(`--replace: unknown role "${r}"`);
      const current = await describeRepo(dir);
      const rootCount: RoleKeyCount | undefined =
        o.rootKeys || o.rootThreshold
          ? {
              keys: o.rootKeys ? int(o.rootKeys, '--root-keys') : current.roles.root.keyIds.length,
              threshold: o.rootThreshold ? int(o.rootThreshold, '--root-threshold') : current.roles.root.threshold,
            }
          : undefined;
      const r = await rotateRoot({ repo: dir, keys: String(o.keys), replace: replace as RoleName[], roles: rootCount ? { root: rootCount } : {}, now: nowOption(o.now) });
      show(r, o.json === true);
    });
  repo
    .command('refresh <dir>')
    .description('re-sign snapshot and timestamp (the fleet server does this before the timestamp expires); --targets re-signs targets too')
    .requiredOption('--keys <dir>', 'the role keys folder')
    .option('--targets', 'also re-sign targets metadata (offline key)')
    .option('--now <time>', 'sign as of this ISO time instead of the clock')
    .option('--json', 'machine-readable output')
    .action(async (dir: string, o: { keys: string; targets?: boolean; now?: string; json?: boolean }) => {
      const r = await refreshMetadata({ repo: dir, keys: o.keys, targets: o.targets, now: nowOption(o.now) });
      if (o.json) printJson(r);
      else console.log(`timestamp version ${r.timestampVersion}, valid until ${r.expires}`);
    });
  repo
    .command('list <dir>')
    .description('the releases in a repository')
    .option('--json', 'machine-readable output')
    .action(async (dir: string, o: { json?: boolean }) => {
      const releases = await listReleases(dir);
      if (o.json) printJson(releases);
      else for (const r of releases) console.log(`${r.custom.name} ${r.custom.version} ${r.custom.board} channel=${r.custom.channel}${r.custom.republishedFrom ? ` (republished ${r.custom.republishedFrom})` : ''}`);
    });
}

function show(r: RepoSummary, json: boolean): void {
  if (json) return printJson(r);
  console.log(`${r.repo}: root version ${r.rootVersion}`);
  for (const [role, v] of Object.entries(r.roles)) console.log(`  ${role.padEnd(9)} ${v.threshold} of ${v.keyIds.length}: ${v.keyIds.map((k) => k.slice(0, 12)).join(' ')}`);
}

function count(o: Record<string, unknown>, role: 'root' | 'targets'): RoleKeyCount {
  return { keys: int(o[`${role}Keys`], `--${role}-keys`), threshold: int(o[`${role}Threshold`], `--${role}-threshold`) };
}

export function int(v: unknown, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new EdgekitError(`${flag}: expected a whole number >= 1, got "${String(v)}"`);
  return n;
}

export function nowOption(v: unknown): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(String(v));
  if (Number.isNaN(d.getTime())) throw new EdgekitError(`--now: "${String(v)}" is not an ISO time`);
  return d;
}
