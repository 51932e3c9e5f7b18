/**
 * `edgekit flash <image> --to <dev> [--to <dev>...]`: one image to several cards at once, each
 * checked for safety first (src/flash/drives.ts), written and read back (src/flash/flash.ts),
 * given its own settings (src/flash/device-config.ts), and optionally watched through its first
 * boot on a serial console (src/flash/console.ts). --auto flashes every card put in until Ctrl-C;
 * --rpiboot first turns a Compute Module into a USB drive (src/flash/rpiboot/).
 */
import { appendFile, stat } from 'node:fs/promises';
import type { Command } from 'commander';
// console.js (serialport) and rpiboot (usb) load in about half a second, the settings and the FAT
// editor (device-config.js) in tens of ms: each only when asked for.
import type { BootResult } from '../flash/console.js';
import type { SerialsRow, SettingTemplates } from '../flash/device-config.js';
import { checkTarget, defaultPlatform, watchForNewDrives, type Drive, type DrivePlatform, type TargetInfo } from '../flash/drives.js';
import { flashImage, type FlashImageInfo, type FlashResult } from '../flash/flash.js';
import { HashPool } from '../flash/hash-pool.js';
import { jsonLines, silent, terminalBars, type TargetProgress } from '../flash/progress-lines.js';
import { openSource, type ImageSource } from '../flash/source.js';
import { loadPublicKey } from '../sign/keys.js';
import { EdgekitError } from '../util/errors.js';
import type { KeyObject } from 'node:crypto';

interface FlashFlags {
  to: string[];
  pubkey?: string;
  insecure?: boolean;
  bmap?: string;
  verify: boolean;
  force?: boolean;
  json?: boolean;
  log?: string;
  eject?: boolean;
  set: string[];
  serials?: string;
  firstRow: string;
  watch: string[];
  expect?: string;
  timeout: string;
  auto?: boolean;
  rpiboot?: boolean;
  usbbootDir?: string;
}

const collect = (v: string, prev: string[]) => [...prev, v];

export function registerFlash(program: Command): void {
  program
    .command('flash <image>')
    .description('write an image (file, .gz, .xz, .zst or http(s) URL) to one or more drives at once, read it back, and optionally watch the first boot')
    .option('--to <device>', 'a target drive (/dev/sdX, /dev/disk/by-path/...) or image file; repeat for several', collect, [])
    .option('--pubkey <file>', 'the public key the image must be signed with')
    .option('--insecure', 'write without checking the signature (not for production)')
    .option('--bmap <file>', 'the block map to use (default: <name>.bmap beside the image)')
    .option('--no-verify', 'skip reading every written range back from the device')
    .option('--force', 'allow a non-removable disk (never the one running this system)')
    .option('--json', 'progress and results as JSON lines on stdout')
    .option('--log <file>', 'append one JSON line per device to this file')
    .option('--eject', 'eject each drive when done')
    .option('--set <key=value>', 'a per-device setting, {column} filled from --serials; repeatable', collect, [])
    .option('--serials <csv>', 'one row per device (a "port" column matches rows to ports)')
    .option('--first-row <n>', 'the --serials row (1 = first after the header) for the first target', '1')
    .option('--watch <target=port>', 'after flashing, watch this target boot on this serial port; repeatable', collect, [])
    .option('--expect <regex>', 'what a good first boot prints (with --watch)')
    .option('--timeout <seconds>', 'how long to wait for --expect (the card has to be moved to the board)', '300')
    .option('--auto', 'tray mode: flash every eligible drive plugged in from now on, until Ctrl-C')
    .option('--rpiboot', 'first put a Raspberry Pi Compute Module in USB mass-storage mode, then flash it')
    .option('--usbboot-dir <dir>', 'second-stage files for --rpiboot (see docs/rpiboot.md)')
    .action(async (image: string, o: FlashFlags) => {
      await runFlash(image, o);
    });
}

async function runFlash(image: string, o: FlashFlags): Promise<void> {
  const modes = [o.to.length > 0, !!o.auto, !!o.rpiboot].filter(Boolean).length;
  if (modes === 0) throw new EdgekitError('flash: give a target with --to <device> (or --auto, or --rpiboot)');
  if (modes > 1) throw new EdgekitError('flash: --to, --auto and --rpiboot are different ways to pick targets: give one');
  if (o.rpiboot && !o.usbbootDir) throw new EdgekitError('flash --rpiboot: give the second-stage files with --usbboot-dir <dir>');
  const watches = parseWatches(o.watch);
  if (watches.length && !o.expect) throw new EdgekitError('flash --watch: give --expect <regex> (what a good boot prints)');
  for (const w of watches) if (!o.to.some((t) => sameTarget(t, w.target))) throw new EdgekitError(`--watch ${w.target}: not one of the --to targets`);
  const expect = o.expect !== undefined ? regexOf(o.expect) : undefined;
  const timeoutS = Number(o.timeout);
  if (!(timeoutS > 0)) throw new EdgekitError(`--timeout ${o.timeout}: not a number of seconds above 0`);
  const firstRow = Number(o.firstRow);
  if (!Number.isInteger(firstRow) || firstRow < 1) throw new EdgekitError(`--first-row ${o.firstRow}: not a row number (1 or more)`);
  if (!o.pubkey && !o.insecure) throw new EdgekitError('flash: give --pubkey <file> to check the image signature (or --insecure to skip the check)');
  if (o.serials && !o.set.length) throw new EdgekitError('flash --serials: give the settings to fill with --set key=value ({column} from the file)');

  // The hashing workers take tens of ms to start: started now, they are up by the time the key,
  // the block map and the image's manifest are read.
  const hashes = new HashPool();
  let results: FlashResult[];
  try {
    let publicKey: KeyObject | undefined;
    if (o.pubkey) publicKey = await loadPublicKey(o.pubkey);
    if (!publicKey) {
      process.stderr.write('edgekit: WARNING: --insecure: the image signature is NOT checked; anything could be written to these devices\n');
    }
    const settingsLib = o.set.length ? await import('../flash/device-config.js') : undefined;
    const templates = settingsLib?.parseSetFlags(o.set) ?? {};
    const rows = settingsLib && o.serials ? settingsLib.readSerialsCsv(o.serials) : undefined;
    const source = await openSource(image, { bmap: o.bmap });
    const job: FlashJob = { source, publicKey, o, templates, rows, nextRow: firstRow - 1, hashes };
    if (o.auto) results = await trayMode(job);
    else if (o.rpiboot) results = await flashAfterRpiboot(job, timeoutS);
    else results = await flashTargets(job, o.to);
  } finally {
    await hashes.close();
  }

  let boots: BootResult[] = [];
  if (watches.length && expect) {
    const pairs = watches.filter((w) => results.some((r) => r.ok && sameTarget(r.target, w.target)));
    if (pairs.length) {
      if (!o.json) process.stderr.write(`watching ${pairs.length} first boot(s) for /${expect.source}/ (up to ${timeoutS} s): move each card to its board and power it on\n`);
      const { watchBoots } = await import('../flash/console.js');
      boots = await watchBoots(pairs, expect, timeoutS * 1000);
      for (const b of boots) {
        if (o.json) process.stdout.write(JSON.stringify({ type: 'boot', ...b }) + '\n');
        else console.log(b.ok ? `boot ok   ${b.target} on ${b.port}: ${JSON.stringify(b.matched)}` : `boot FAIL ${b.target} on ${b.port}: ${b.error}`);
      }
    }
  }
  const failed = results.filter((r) => !r.ok).length;
  const bootFailed = boots.filter((b) => !b.ok).length;
  if (failed || bootFailed) {
    const parts = [];
    if (failed) parts.push(`${failed} of ${results.length} target(s) failed`);
    if (bootFailed) parts.push(`${bootFailed} of ${boots.length} first boot(s) failed`);
    throw new EdgekitError(`flash: ${parts.join('; ')}`);
  }
  if (results.length === 0 && !o.auto) throw new EdgekitError('flash: nothing was flashed');
}

interface FlashJob {
  source: ImageSource;
  publicKey?: KeyObject;
  o: FlashFlags;
  templates: SettingTemplates;
  rows?: SerialsRow[];
  /** The next --serials row for rows matched by order (tray mode moves on per card). */
  nextRow: number;
  platform?: DrivePlatform;
  hashes: HashPool;
}

/** Checks every target, flashes them all from one read of the image, reports, logs, ejects. */
async function flashTargets(job: FlashJob, targets: string[]): Promise<FlashResult[]> {
  const { o } = job;
  const infos = new Map<string, TargetInfo>();
  const settingsOf = new Map<string, Record<string, string>>();
  const platform = () => (job.platform ??= defaultPlatform());
  const progress: TargetProgress = o.json ? jsonLines() : process.stderr.isTTY ? terminalBars(targets) : silent;
  let image: FlashImageInfo | undefined;
  let results: FlashResult[];
  try {
    results = await flashImage({
      source: job.source,
      targets,
      publicKey: job.publicKey,
      insecure: !job.publicKey,
      verify: o.verify,
      hashes: job.hashes,
      progress: (t, ev) => progress.update(t, ev),
      settings: (t) => settingsOf.get(t),
      beforeWrite: async (info) => {
        image = info;
        // Every target is checked before any is written: one refusal stops them all.
        for (const t of targets) {
          const isDevice = !(await isFileTarget(t));
          infos.set(t, await checkTarget(t, { imageSize: info.imageSize, force: o.force, platform: isDevice ? platform() : undefined }));
        }
        if (o.set.length) {
          const { assignRows, expandSettings } = await import('../flash/device-config.js');
          const list = targets.map((t) => ({ path: t, byPath: infos.get(t)?.drive?.byPath }));
          const rows = job.rows ? assignRows(job.rows, list, { first: job.nextRow }) : targets.map((): SerialsRow => ({}));
          targets.forEach((t, i) => settingsOf.set(t, expandSettings(job.templates, rows[i])));
          if (job.rows) job.nextRow += targets.length;
        }
        if (!o.json && !process.stderr.isTTY) {
          process.stderr.write(`flashing ${job.source.name} (${info.manifest.name} ${info.manifest.version}, ${info.manifest.board}) to ${targets.join(', ')}\n`);
        }
      },
    });
  } finally {
    progress.end();
  }
  for (const r of results) report(r, o.json);
  if (o.log) {
    const lines = results.map((r) => JSON.stringify(logLine(r, job.source, image, infos.get(r.target)?.drive)) + '\n');
    await appendFile(o.log, lines.join('')).catch((err: NodeJS.ErrnoException) => {
      throw new EdgekitError(`${o.log}: cannot append to the log: ${err.code ?? err.message}`);
    });
  }
  if (o.eject) {
    for (const r of results) {
      if (infos.get(r.target)?.kind !== 'device') continue;
      await platform()
        .eject(r.target)
        .then(
          () => !o.json && process.stderr.write(`ejected ${r.target}\n`),
          (err: Error) => process.stderr.write(`edgekit: ${r.target}: eject failed: ${err.message}\n`),
        );
    }
  }
  return results;
}

async function isFileTarget(path: string): Promise<boolean> {
  const info = await stat(path).catch(() => undefined);
  return !info || info.isFile();
}

function report(r: FlashResult, json?: boolean): void {
  if (json) {
    process.stdout.write(JSON.stringify({ type: 'result', ...r }) + '\n');
    return;
  }
  for (const n of r.notes) process.stderr.write(`edgekit: note: ${n}\n`);
  if (r.ok) {
    const check = r.verified === 'skipped' ? 'not read back (--no-verify)' : `read back and verified${r.readBack === 'page-cache' ? ' (through the page cache)' : ''}`;
    console.log(`ok   ${r.target}: ${(r.bytesWritten / 1048576).toFixed(1)} MiB written, ${check}, ${r.seconds.toFixed(1)} s`);
  } else {
    console.log(`FAIL ${r.target}: ${r.error}`);
  }
}

/** One line of the --log file: which device got which image, and how it went. */
function logLine(r: FlashResult, source: ImageSource, image: FlashImageInfo | undefined, drive: Drive | undefined) {
  return {
    target: r.target,
    ...(drive?.serial ? { serial: drive.serial } : {}),
    ...(drive?.byPath ? { port: drive.byPath } : {}),
    ...(drive?.model ? { model: drive.model } : {}),
    image: source.name,
    ...(image ? { name: image.manifest.name, version: image.manifest.version, board: image.manifest.board } : {}),
    imageSha256: r.sha256,
    ...(image?.bmapSha256 ? { bmapSha256: image.bmapSha256 } : {}),
    signature: image?.signature ?? 'not checked',
    seconds: r.seconds,
    bytesWritten: r.bytesWritten,
    verified: r.verified,
    result: r.ok ? 'ok' : 'failed',
    ...(r.error ? { error: r.error } : {}),
  };
}

function parseWatches(flags: string[]): Array<{ target: string; port: string }> {
  return flags.map((f) => {
    const eq = f.lastIndexOf('=');
    if (eq <= 0 || eq === f.length - 1) throw new EdgekitError(`--watch "${f}": expected <target>=<serial port>, e.g. /dev/sdb=/dev/ttyUSB0`);
    return { target: f.slice(0, eq), port: f.slice(eq + 1) };
  });
}

function regexOf(text: string): RegExp {
  try {
    return new RegExp(text);
  } catch (err) {
    throw new EdgekitError(`--expect ${JSON.stringify(text)}: not a regular expression (${(err as Error).message})`);
  }
}

function sameTarget(a: string, b: string): boolean {
  return a === b;
}

/** Tray mode: each eligible drive plugged in after the start is flashed, one after another. */
async function trayMode(job: FlashJob): Promise<FlashResult[]> {
  const platform = (job.platform ??= defaultPlatform());
  const results: FlashResult[] = [];
  let queue = Promise.resolve();
  let stop!: () => void;
  const stopped = new Promise<void>((resolve) => (stop = resolve));
  const watcher = watchForNewDrives(
    platform,
    (d) => {
      if (!job.o.json) process.stderr.write(`new drive ${d.path}${d.model ? ` (${d.model})` : ''}\n`);
      queue = queue.then(async () => {
        try {
          results.push(...(await flashTargets(job, [d.path])));
        } catch (err) {
          // A refusal or a bad source for one card must not end tray mode; it is reported and counted.
          const error = err instanceof EdgekitError ? err.message : String(err);
          process.stderr.write(`edgekit: ${error}\n`);
          results.push({ target: d.path, ok: false, bytesWritten: 0, seconds: 0, sha256: '', error, verified: false, notes: [] });
        }
      });
    },
    { intervalMs: 1000, force: job.o.force, onError: (err) => process.stderr.write(`edgekit: listing drives: ${(err as Error).message}\n`) },
  );
  const onSignal = () => stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    await watcher.ready;
    if (!job.o.json) process.stderr.write('waiting for drives (Ctrl-C to stop)\n');
    await stopped;
  } finally {
    watcher.stop();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  await queue; // a card being written is finished, not abandoned
  if (!job.o.json) process.stderr.write(`tray mode stopped: ${results.filter((r) => r.ok).length} flashed, ${results.filter((r) => !r.ok).length} failed\n`);
  return results;
}

/** rpiboot, then the drive that the Compute Module becomes. */
async function flashAfterRpiboot(job: FlashJob, timeoutS: number): Promise<FlashResult[]> {
  const platform = (job.platform ??= defaultPlatform());
  let found!: (d: Drive) => void;
  const drive = new Promise<Drive>((resolve) => (found = resolve));
  // Watching starts before rpiboot so the new drive is new to the watcher.
  const watcher = watchForNewDrives(platform, (d) => found(d), { intervalMs: 500, force: job.o.force });
  try {
    await watcher.ready;
    const { rpiboot } = await import('../flash/rpiboot/client.js');
    const r = await rpiboot({ usbbootDir: job.o.usbbootDir!, timeoutMs: timeoutS * 1000 });
    if (!job.o.json) process.stderr.write(`rpiboot: device ${r.serial ?? r.location} is in mass-storage mode; waiting for its drive\n`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new EdgekitError(`rpiboot: no new drive appeared within ${timeoutS} s of the device booting`)), timeoutS * 1000);
    });
    const d = await Promise.race([drive, timeout]).finally(() => clearTimeout(timer));
    return await flashTargets(job, [d.path]);
  } finally {
    watcher.stop();
  }
}
