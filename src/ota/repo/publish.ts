/**
 * Publishing releases into a repository: a built image becomes a set of content-named targets
 * plus one release target whose signed custom data tells a device what to install. A fleet
 * rollback publishes an older release's files again under a new, higher version (devices never
 * accept a lower one); withdrawing removes a release from its channel.
 */
import { link, mkdir, mkdtemp, rename, rm, stat, copyFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { TargetFile, type Targets } from '@tufjs/models';
import { EdgekitError } from '../../util/errors.js';
import { sha256OfFile } from '../../util/hash.js';
import { targetFilePath } from './layout.js';
import { readState, type RepoState } from './metadata-files.js';
import { readPolicy, type RepoPolicy } from './policy.js';
import { writeTargets, writeTargetsChain } from './chain.js';
import { bumpTargets } from './repo-admin.js';
import { extractRelease, type ExtractedRelease } from './image-payloads.js';
import { makeDelta, type DeltaInfo } from '../delta/make.js';
import { RELEASE_FILE, compareVersions, releaseDir, type DeltaRef, type EdgekitCustom, type FileCustom, type ReleaseCustom } from './release-info.js';

export interface PublishOptions {
  /** A built .img with its embedded manifest. */
  image: string;
  repo: string;
  /** The release version; must be higher than every release of this image+board in the channel. */
  version: string;
  channel?: string;
  /** The keys folder (targets, snapshot and timestamp keys are used; only targets with targetsOnly). */
  keys: string;
  now?: Date;
  /**
   * Sign and write the new targets metadata only: snapshot and timestamp are left to whoever holds
   * the online keys (a fleet server the release is then sent to), so the keys folder needs none.
   */
  targetsOnly?: boolean;
  /**
   * Fetches an existing target the folder lacks (a mirror of a remote repository holds metadata
   * only) to `file`, checked against the target's length and sha256: the old roots of --delta-from.
   */
  fetchTarget?: (target: TargetFile, file: string) => Promise<void>;
  /** Delta files made by makeDelta from earlier releases' root payloads (targets too). */
  deltas?: { file: string; fromVersion: string; fromSha256: string; info?: Record<string, unknown> }[];
  /**
   * Earlier versions (of this image and board, in the repository) to make root deltas from, so
   * devices running them download only what changed. Versions whose root is the same as this
   * one's need no delta and are skipped.
   */
  deltaFrom?: string[];
  /** Told about each delta as it is made (making one takes a while on a big root). */
  onDelta?: (fromVersion: string, info: DeltaInfo) => void;
}

export interface Release {
  target: string;
  custom: ReleaseCustom;
  files: { path: string; length: number; sha256: string }[];
}

export const DEFAULT_CHANNEL = 'stable';

export async function publishRelease(o: PublishOptions): Promise<Release> {
  checkVersion(o.version);
  const channel = o.channel ?? DEFAULT_CHANNEL;
  const now = o.now ?? new Date();
  const policy = await readPolicy(o.repo);
  const state = await readState(o.repo);
  await mkdir(join(o.repo, 'targets'), { recursive: true });
  const staging = await mkdtemp(join(o.repo, '.staging-'));
  try {
    const x = await extractRelease(o.image, staging);
    const m = x.manifest.signed;
    checkNewVersion(state.targets.signed, m.name, m.board, channel, o.version);
    // Before the staged files move into the repository.
    const made = await makeDeltasFrom(o, state.targets.signed, x, staging);
    const dir = releaseDir(m.name, m.board, o.version);
    const targets = { ...state.targets.signed.targets };
    const paths: Partial<Record<FileCustom['kind'], string>> = {};
    const devicetrees: Record<string, string> = {};
    for (const f of x.files) {
      const t = await addFile(o.repo, `${dir}/${f.name}`, f.path, { kind: f.kind, name: m.name, board: m.board, version: o.version });
      targets[t.path] = t;
      if (f.inSlot) devicetrees[f.inSlot] = t.path;
      else paths[f.kind] = t.path;
    }
    const deltas: DeltaRef[] = [];
    for (const d of [...(o.deltas ?? []), ...made]) {
      const base = d.file.slice(d.file.lastIndexOf('/') + 1);
      const t = await addFile(o.repo, `${dir}/deltas/${d.fromVersion}/${base}`, d.file, { kind: 'delta', name: m.name, board: m.board, version: o.version }, true);
      targets[t.path] = t;
      deltas.push({ target: t.path, fromVersion: d.fromVersion, fromSha256: d.fromSha256, length: t.length, sha256: t.hashes.sha256, info: d.info });
    }
    const slotA = m.slots.a;
    const rootPayload = m.payloads.find((p) => p.name === slotA.rootPayload);
    const custom: ReleaseCustom = {
      kind: 'release',
      name: m.name,
      board: m.board,
      version: o.version,
      channel,
      bootchooser: m.bootchooser,
      slot: {
        kernel: paths.kernel!,
        initrd: paths.initrd!,
        ...(paths.devicetree ? { devicetree: paths.devicetree } : {}),
        ...(Object.keys(devicetrees).length ? { devicetrees } : {}),
        cmdline: slotA.cmdline,
        root: slotA.root,
        ...(paths.root ? { rootPayload: paths.root } : {}),
      },
      ...(rootPayload?.verity ? { verity: rootPayload.verity } : {}),
      deltas,
    };
    const release = await addFile(o.repo, `${dir}/${RELEASE_FILE}`, x.manifestFile, custom);
    targets[release.path] = release;
    await commit(state, bumpTargets(state.targets.signed, now, policy, targets), { ...o, now, policy });
    return describe(release, targets);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/** Makes root deltas from the releases `o.deltaFrom` names to the image being published. */
async function makeDeltasFrom(o: PublishOptions, t: Targets, x: ExtractedRelease, staging: string): Promise<NonNullable<PublishOptions['deltas']>> {
  const out: NonNullable<PublishOptions['deltas']> = [];
  if (!o.deltaFrom?.length) return out;
  const m = x.manifest.signed;
  const root = x.files.find((f) => f.kind === 'root');
  if (!root) throw new EdgekitError(`${o.image}: its root is in RAM (root: ram): there is no root payload to make deltas for`);
  const salt = m.payloads.find((p) => p.name === m.slots.a.rootPayload)?.verity?.salt;
  const toSha = await sha256OfFile(root.path);
  for (const from of o.deltaFrom) {
    const old = pickOne(findReleases(t, { version: from, name: m.name, board: m.board }), `${o.repo}: release ${from} of ${m.name} for ${m.board} (--delta-from)`);
    const rootTarget = old.custom.slot.rootPayload ? t.targets[old.custom.slot.rootPayload] : undefined;
    if (!rootTarget) throw new EdgekitError(`${o.repo}: release ${from} has no root payload to make a delta from`);
    const fromSha = rootTarget.hashes.sha256;
    if (fromSha === toSha) continue;
    const oldFile = targetFilePath(o.repo, rootTarget.path, fromSha);
    if (o.fetchTarget && !(await exists(oldFile))) {
      await mkdir(dirname(oldFile), { recursive: true });
      await o.fetchTarget(rootTarget, oldFile);
    }
    await mkdir(join(staging, 'deltas', from), { recursive: true });
    const file = join(staging, 'deltas', from, 'system.delta');
    const info = await makeDelta(oldFile, root.path, file, salt ? { veritySalt: salt } : {});
    o.onDelta?.(from, info);
    out.push({ file, fromVersion: from, fromSha256: fromSha, info: { bytes: info.bytes, copiedBytes: info.copiedBytes, rebuiltBytes: info.rebuiltBytes, changedFiles: info.changedFiles } });
  }
  return out;
}

export interface RepublishOptions {
  repo: string;
  /** The earlier version whose files are published again. */
  from: string;
  /** The new version: higher than anything in the channel, so devices move to it. */
  version: string;
  channel?: string;
  /** Needed only when the repository holds several images or boards with version `from`. */
  name?: string;
  board?: string;
  keys: string;
  now?: Date;
  /**
   * As for publishRelease; the folder may then be a mirror holding metadata only: the old files
   * are not linked under their new names (the server holding the repository does that).
   */
  targetsOnly?: boolean;
}

/** A fleet rollback: the old release's payloads under a new version (same files, no copies). */
export async function republishRelease(o: RepublishOptions): Promise<Release> {
  checkVersion(o.version);
  const now = o.now ?? new Date();
  const policy = await readPolicy(o.repo);
  const state = await readState(o.repo);
  const all = state.targets.signed.targets;
  const old = pickOne(findReleases(state.targets.signed, { version: o.from, name: o.name, board: o.board }), `${o.repo}: release ${o.from}`);
  const oc = old.custom;
  const channel = o.channel ?? oc.channel;
  checkNewVersion(state.targets.signed, oc.name, oc.board, channel, o.version);
  const oldDir = releaseDir(oc.name, oc.board, oc.version);
  const dir = releaseDir(oc.name, oc.board, o.version);
  const targets = { ...all };
  const moved = (p: string | undefined) => (p ? dir + p.slice(oldDir.length) : undefined);
  for (const t of Object.values(all)) {
    const c = customOf(t);
    if (!c || c.kind === 'release' || c.kind === 'delta' || !t.path.startsWith(`${oldDir}/`)) continue;
    const copy = await addExisting(o.repo, t, moved(t.path)!, { ...c, version: o.version }, !o.targetsOnly);
    targets[copy.path] = copy;
  }
  const s = oc.slot;
  const custom: ReleaseCustom = {
    ...oc,
    version: o.version,
    channel,
    republishedFrom: oc.version,
    slot: {
      ...s, kernel: moved(s.kernel)!, initrd: moved(s.initrd)!, ...(s.devicetree ? { devicetree: moved(s.devicetree) } : {}),
      ...(s.devicetrees ? { devicetrees: Object.fromEntries(Object.entries(s.devicetrees).map(([rel, p]) => [rel, moved(p)!])) } : {}),
      ...(s.rootPayload ? { rootPayload: moved(s.rootPayload) } : {}),
    },
    // Deltas were made against the versions before the old release; devices now run newer ones.
    deltas: [],
  };
  const release = await addExisting(o.repo, all[old.target], `${dir}/${RELEASE_FILE}`, custom, !o.targetsOnly);
  targets[release.path] = release;
  await commit(state, bumpTargets(state.targets.signed, now, policy, targets), { ...o, now, policy });
  return describe(release, targets);
}

export interface WithdrawOptions {
  repo: string;
  version: string;
  name?: string;
  board?: string;
  channel?: string;
  keys: string;
  now?: Date;
  /** As for publishRelease. */
  targetsOnly?: boolean;
}

/**
 * Removes a release (its release target and files) from targets metadata, so devices stop being
 * offered it. Payload files stay in targets/: other releases may share them, and a device that
 * already has the old metadata may be mid-download.
 */
export async function withdrawRelease(o: WithdrawOptions): Promise<Release[]> {
  const now = o.now ?? new Date();
  const policy = await readPolicy(o.repo);
  const state = await readState(o.repo);
  const hits = findReleases(state.targets.signed, o);
  if (hits.length === 0) throw new EdgekitError(`${o.repo}: no release ${o.version}${o.channel ? ` in channel ${o.channel}` : ''} to withdraw`);
  const targets = { ...state.targets.signed.targets };
  const out: Release[] = [];
  for (const r of hits) {
    out.push(describe(targets[r.target], targets));
    const dir = releaseDir(r.custom.name, r.custom.board, r.custom.version);
    for (const p of Object.keys(targets)) if (p.startsWith(`${dir}/`)) delete targets[p];
  }
  await commit(state, bumpTargets(state.targets.signed, now, policy, targets), { ...o, now, policy });
  return out;
}

/** Writes the new targets metadata, and snapshot and timestamp over it unless `targetsOnly`. */
async function commit(state: RepoState, targets: Targets, o: { repo: string; keys: string; now: Date; policy: RepoPolicy; targetsOnly?: boolean }): Promise<void> {
  if (o.targetsOnly) await writeTargets(state, targets, o);
  else await writeTargetsChain(state, targets, { repo: o.repo, keys: o.keys, now: o.now, policy: o.policy });
}

export async function listReleases(repo: string): Promise<Release[]> {
  const state = await readState(repo);
  const t = state.targets.signed.targets;
  return findReleases(state.targets.signed, {})
    .sort((a, b) => compareVersions(a.custom.version, b.custom.version))
    .map((r) => describe(t[r.target], t));
}

export function customOf(t: TargetFile): EdgekitCustom | undefined {
  const c = t.custom?.edgekit;
  return c && typeof c === 'object' ? (c as EdgekitCustom) : undefined;
}

export function findReleases(t: Targets, f: { version?: string; name?: string; board?: string; channel?: string }): { target: string; custom: ReleaseCustom }[] {
  const out: { target: string; custom: ReleaseCustom }[] = [];
  for (const [path, target] of Object.entries(t.targets)) {
    const c = customOf(target);
    if (c?.kind !== 'release') continue;
    if ((f.version && c.version !== f.version) || (f.name && c.name !== f.name) || (f.board && c.board !== f.board) || (f.channel && c.channel !== f.channel)) continue;
    out.push({ target: path, custom: c });
  }
  return out.sort((a, b) => (a.target < b.target ? -1 : 1));
}

function pickOne<T>(hits: T[], what: string): T {
  if (hits.length === 0) throw new EdgekitError(`${what} is not in the repository (withdrawn, or never published?)`);
  if (hits.length > 1) throw new EdgekitError(`${what} exists for several images or boards; say which with --name/--board`);
  return hits[0];
}

function checkVersion(v: string): void {
  if (!/^[0-9A-Za-z][0-9A-Za-z.+~_-]*$/.test(v)) throw new EdgekitError(`version "${v}": use letters, digits and . + ~ _ - (it becomes a folder name)`);
}

function checkNewVersion(t: Targets, name: string, board: string, channel: string, version: string): void {
  const same = findReleases(t, { name, board });
  if (same.some((r) => r.custom.version === version)) throw new EdgekitError(`${name} ${version} for ${board} is already published; pick a new version`);
  const newest = same
    .filter((r) => r.custom.channel === channel)
    .map((r) => r.custom.version)
    .sort(compareVersions)
    .at(-1);
  if (newest && compareVersions(version, newest) <= 0) {
    throw new EdgekitError(`${name} ${version} for ${board}: channel ${channel} already has ${newest}; devices only move up, so publish a higher version (to roll back: --republish <old> --version <higher>)`);
  }
}

/** Moves (or links) a file into targets/ under its content name and returns its TUF target. */
async function addFile(repo: string, path: string, file: string, custom: EdgekitCustom, keepSource = false): Promise<TargetFile> {
  const sha256 = await sha256OfFile(file);
  const { size } = await stat(file);
  const dest = targetFilePath(repo, path, sha256);
  await mkdir(dirname(dest), { recursive: true });
  if (!(await exists(dest))) {
    if (keepSource) await copyFile(file, dest);
    else await rename(file, dest);
  }
  return new TargetFile({ path, length: size, hashes: { sha256 }, unrecognizedFields: { custom: { edgekit: custom as never } } });
}

/** The same content under a new target path: a hard link where the filesystem allows it (when `place`). */
async function addExisting(repo: string, from: TargetFile, path: string, custom: EdgekitCustom, place: boolean): Promise<TargetFile> {
  const sha256 = from.hashes.sha256;
  const src = targetFilePath(repo, from.path, sha256);
  const dest = targetFilePath(repo, path, sha256);
  if (place) {
    await mkdir(dirname(dest), { recursive: true });
    if (!(await exists(dest))) await link(src, dest).catch(() => copyFile(src, dest));
  }
  return new TargetFile({ path, length: from.length, hashes: { sha256 }, unrecognizedFields: { custom: { edgekit: custom as never } } });
}

function describe(release: TargetFile, targets: Record<string, TargetFile>): Release {
  const c = customOf(release) as ReleaseCustom;
  const dir = releaseDir(c.name, c.board, c.version);
  const files = Object.values(targets)
    .filter((t) => t.path.startsWith(`${dir}/`))
    .map((t) => ({ path: t.path, length: t.length, sha256: t.hashes.sha256 }))
    .sort((a, b) => (a.path < b.path ? -1 : 1));
  return { target: release.path, custom: c, files };
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}
