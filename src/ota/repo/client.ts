/**
 * The device side: fetches and verifies release metadata with tuf-js (signatures, thresholds,
 * expiry, version rollback, snapshot/targets consistency, length caps), under the trusted-time
 * rule in trusted-time.ts, and says which release this device should run next.
 */
import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createWriteStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { Updater, BaseFetcher, type TargetFile } from 'tuf-js';
import { DefaultFetcher } from 'tuf-js/dist/fetcher.js';
import type { Metadata, Targets, Timestamp } from '@tufjs/models';
import { EdgekitError } from '../../util/errors.js';
import { writeAtomic } from '../../util/atomic.js';
import { METADATA_DIR, TARGETS_DIR } from './layout.js';
import { ISSUED_FIELD } from './metadata-files.js';
import { compareVersions, type ReleaseCustom } from './release-info.js';
import { DirFetcher, HeaderFetcher, verifiedStream, type RequestHeaders } from './fetchers.js';
import { latest, raiseTrustedTime, readTrustedTime } from './trusted-time.js';
import { DEFAULT_CHANNEL, customOf } from './publish.js';

export interface MetadataClientOptions {
  /** http(s) URL of the repository folder (holding metadata/ and targets/). */
  repoUrl?: string;
  /** Or a local folder holding the repository. */
  repoDir?: string;
  /** With repoUrl: where targets/ is when not beside metadata/ (a static host or CDN). */
  targetsUrl?: string;
  /** With repoUrl: extra request headers (a fleet server's device token); see HeaderFetcher. */
  headers?: RequestHeaders;
  /** The root metadata the device was built with (the first one it trusts). */
  trustedRoot: string;
  /** Where the last accepted metadata and the trusted time are kept (survives reboots). */
  stateDir: string;
  board: string;
  /** Image name; releases of other images are ignored. */
  name?: string;
  channel?: string;
  /** The version running now: only a higher one is offered. */
  installedVersion?: string;
  /**
   * This release and no other (the one a fleet server chose), on whichever channel it was
   * published; it must still be signed for this board and image, and higher than the installed one.
   */
  version?: string;
  /** The device clock; default the system clock. */
  clock?: () => Date;
  /** A time the device knows has passed, e.g. its image's build time (SOURCE_DATE_EPOCH). */
  minimumTime?: Date;
}

export interface TargetInfo {
  path: string;
  length: number;
  sha256: string;
}

export interface UpdateInfo {
  version: string;
  release: ReleaseCustom;
  /** The verified targets this release needs: boot files, the root payload, deltas. */
  kernel: TargetInfo;
  initrd: TargetInfo;
  devicetree?: TargetInfo;
  /** The device trees for the slot's folder, by their path inside it (empty: the release has none). */
  devicetrees: Record<string, TargetInfo>;
  rootPayload?: TargetInfo;
  manifest: TargetInfo;
  deltas: (TargetInfo & { fromVersion: string; fromSha256: string })[];
  /** Versions of the metadata that was accepted, for logs and reports. */
  metadata: { root: number; timestamp: number; snapshot: number; targets: number };
  /** The time metadata was checked against. */
  referenceTime: string;
}

export interface MetadataClient {
  /** Fetches and verifies metadata; the newest release for this device, or null if none is newer. */
  refresh(): Promise<UpdateInfo | null>;
  /** A verified stream of a target (length-capped; errors at the end unless the hash matches). */
  open(target: TargetInfo): Promise<Readable>;
  /** Downloads a target to `file` through tuf-js (length-capped, hash-checked), atomically. */
  download(target: TargetInfo, file: string): Promise<void>;
  /** The device's trusted time: it never goes backwards. */
  trustedTime(): Promise<Date>;
}

/** The internals of tuf-js's Updater we rely on; checked at run time so an upgrade fails loudly. */
interface UpdaterInternals {
  trustedSet: { referenceTime: Date; targets?: Metadata<Targets>; timestamp?: Metadata<Timestamp>; snapshot?: { signed: { version: number } }; root: { signed: { version: number } } };
}

export function createMetadataClient(o: MetadataClientOptions): MetadataClient {
  if (!o.repoUrl === !o.repoDir) throw new EdgekitError('metadata client: give exactly one of repoUrl and repoDir');
  const base = o.repoUrl ? o.repoUrl.replace(/\/*$/, '/') : pathToFileURL(resolve(o.repoDir!)).href + '/';
  const targetsBase = o.targetsUrl ? o.targetsUrl.replace(/\/*$/, '/') : base + TARGETS_DIR + '/';
  const where = o.repoUrl ?? o.repoDir!;
  const metadataDir = join(o.stateDir, METADATA_DIR);
  const clock = o.clock ?? (() => new Date());
  const fetcher: BaseFetcher = !o.repoUrl
    ? new DirFetcher()
    : o.headers
      ? new HeaderFetcher(o.headers, { userAgent: 'edgekit', timeoutMs: 60_000, retries: 2 })
      : new DefaultFetcher({ userAgent: 'edgekit', timeout: 60_000, retry: 2 });
  let verified: { updater: Updater; targets: Targets } | undefined;

  async function referenceTime(): Promise<Date> {
    return latest(clock(), await readTrustedTime(o.stateDir), o.minimumTime);
  }

  async function refresh(): Promise<UpdateInfo | null> {
    await mkdir(metadataDir, { recursive: true });
    // The shipped root seeds the state; afterwards the newest accepted root (after rotations) is used.
    if (!(await exists(join(metadataDir, 'root.json')))) await copyFile(o.trustedRoot, join(metadataDir, 'root.json'));
    const now = await referenceTime();
    const updater = new Updater({
      metadataDir,
      metadataBaseUrl: base + METADATA_DIR,
      targetBaseUrl: targetsBase.slice(0, -1),
      fetcher,
      config: { fetchTimeout: 60_000 },
    });
    internals(updater).trustedSet.referenceTime = now;
    try {
      await updater.refresh();
    } catch (err) {
      await raiseAfterFailure(now);
      verified = undefined;
      throw new EdgekitError(`${where}: update metadata refused: ${reasonOf(err)}`);
    }
    const set = internals(updater).trustedSet;
    const issued = new Date(String(set.timestamp!.signed.unrecognizedFields[ISSUED_FIELD] ?? 0));
    await raiseTrustedTime(o.stateDir, latest(now, Number.isNaN(issued.getTime()) ? undefined : issued));
    const targets = set.targets!.signed;
    verified = { updater, targets };
    const release = o.version ? chosenRelease(targets, o, o.version, where) : pickRelease(targets, o);
    if (!release) return null;
    const info = (path: string | undefined): TargetInfo | undefined => {
      if (!path) return undefined;
      const t = targets.targets[path];
      if (!t) throw new EdgekitError(`${where}: release ${release.custom.version} names target ${path}, which targets metadata lacks`);
      return { path, length: t.length, sha256: t.hashes.sha256 };
    };
    const r = release.custom;
    return {
      version: r.version,
      release: r,
      kernel: info(r.slot.kernel)!,
      initrd: info(r.slot.initrd)!,
      devicetree: info(r.slot.devicetree),
      devicetrees: Object.fromEntries(Object.entries(r.slot.devicetrees ?? {}).map(([rel, p]) => [rel, info(p)!])),
      rootPayload: info(r.slot.rootPayload),
      manifest: info(release.path)!,
      deltas: (r.deltas ?? []).map((d) => ({ ...info(d.target)!, fromVersion: d.fromVersion, fromSha256: d.fromSha256 })),
      metadata: { root: set.root.signed.version, timestamp: set.timestamp!.signed.version, snapshot: set.snapshot!.signed.version, targets: targets.version },
      referenceTime: now.toISOString(),
    };
  }

  /** See trusted-time.ts: the clock counts, capped at the newest accepted timestamp's expiry. */
  async function raiseAfterFailure(now: Date): Promise<void> {
    try {
      const ts = JSON.parse(await readFile(join(metadataDir, 'timestamp.json'), 'utf8')) as { signed?: { expires?: string } };
      const cap = new Date(ts.signed?.expires ?? NaN);
      if (!Number.isNaN(cap.getTime())) await raiseTrustedTime(o.stateDir, new Date(Math.min(now.getTime(), cap.getTime())));
    } catch {
      // No timestamp accepted yet: nothing signed bounds the clock, so it is not recorded.
    }
  }

  function trusted(target: TargetInfo): TargetFile {
    if (!verified) throw new EdgekitError(`${where}: refresh() must succeed before downloading ${target.path}`);
    const t = verified.targets.targets[target.path];
    if (!t || t.length !== target.length || t.hashes.sha256 !== target.sha256) {
      throw new EdgekitError(`${where}: ${target.path} is not a target of the verified metadata`);
    }
    return t;
  }

  async function open(target: TargetInfo): Promise<Readable> {
    const t = trusted(target);
    const slash = t.path.lastIndexOf('/');
    const url = `${targetsBase}${t.path.slice(0, slash + 1)}${t.hashes.sha256}.${t.path.slice(slash + 1)}`;
    const body = await (fetcher as BaseFetcher & { fetch(url: string): Promise<ReadableStream<Uint8Array>> }).fetch(url).catch((err: unknown) => {
      throw new EdgekitError(`${url}: download failed: ${reasonOf(err)}`);
    });
    return verifiedStream(body, t.length, t.hashes.sha256, url);
  }

  async function download(target: TargetInfo, file: string): Promise<void> {
    const t = trusted(target);
    await writeAtomic(file, async (tmp) => {
      try {
        await verified!.updater.downloadTarget(t, tmp);
      } catch (err) {
        throw new EdgekitError(`${where}: target ${t.path} refused: ${reasonOf(err)}`);
      }
    });
  }

  return { refresh, open, download, trustedTime: referenceTime };
}

function pickRelease(targets: Targets, o: MetadataClientOptions): { path: string; custom: ReleaseCustom } | undefined {
  const channel = o.channel ?? DEFAULT_CHANNEL;
  let best: { path: string; custom: ReleaseCustom } | undefined;
  for (const [path, t] of Object.entries(targets.targets)) {
    const c = customOf(t);
    if (c?.kind !== 'release' || c.board !== o.board || c.channel !== channel || (o.name && c.name !== o.name)) continue;
    if (!best || compareVersions(c.version, best.custom.version) > 0) best = { path, custom: c };
  }
  if (best && o.installedVersion && compareVersions(best.custom.version, o.installedVersion) <= 0) return undefined;
  return best;
}

/** The release a fleet server named, refused unless the signed metadata has it for this device. */
function chosenRelease(targets: Targets, o: MetadataClientOptions, version: string, where: string): { path: string; custom: ReleaseCustom } {
  const found = Object.entries(targets.targets)
    .map(([path, t]) => ({ path, custom: customOf(t) }))
    .filter((r): r is { path: string; custom: ReleaseCustom } => r.custom?.kind === 'release' && r.custom.board === o.board && (!o.name || r.custom.name === o.name) && r.custom.version === version)
    // Published on several channels (unusual): the device's own channel first.
    .sort((a, b) => Number(b.custom.channel === (o.channel ?? DEFAULT_CHANNEL)) - Number(a.custom.channel === (o.channel ?? DEFAULT_CHANNEL)));
  if (!found.length) throw new EdgekitError(`${where}: release ${version} (offered by the fleet server) is not in the signed metadata for ${o.name ?? 'this image'} on ${o.board}`);
  if (o.installedVersion && compareVersions(version, o.installedVersion) <= 0) {
    throw new EdgekitError(`release ${version} (offered by the fleet server) is not newer than the installed ${o.installedVersion}: refused (a rollback is the old release published again under a higher version)`);
  }
  return found[0];
}

function internals(u: Updater): UpdaterInternals {
  const set = (u as unknown as Partial<UpdaterInternals>).trustedSet;
  if (!set || !(set.referenceTime instanceof Date)) throw new Error('tuf-js Updater internals changed: trustedSet.referenceTime is gone');
  return u as unknown as UpdaterInternals;
}

/** One line saying why tuf-js refused, with the attack it points to. */
export function reasonOf(err: unknown): string {
  const msg = (err instanceof Error ? err.message : String(err)).replace(/\s+/g, ' ').replace(/\b(Error: )+/g, '');
  const kinds: [RegExp, string][] = [
    [/Max length reached/i, 'endless data: the server sent more than the metadata allows'],
    [/expired/i, 'expired metadata (freeze attack, or a server that stopped re-signing)'],
    [/Expected (length|hash)/i, 'length or hash mismatch (a tampered or mixed-up file)'],
    [/signed by \d+\/\d+ keys/i, 'signature threshold not met'],
    [/(less than current|Expected version|does not match snapshot version|doesn't match timestamp)/i, 'version rollback or mix-and-match'],
  ];
  const kind = kinds.find(([re]) => re.test(msg));
  return kind ? `${kind[1]}: ${msg}` : msg;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

// Re-exported so callers can pipe a verified target without importing node:stream themselves.
export async function saveStream(stream: Readable, file: string): Promise<void> {
  await writeAtomic(file, (tmp) => pipeline(stream, createWriteStream(tmp)));
}
