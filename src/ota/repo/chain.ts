/**
 * Writing a new repository state in the order that keeps every moment consistent for a device
 * polling it: targets first, then the snapshot naming it, then the timestamp naming the snapshot
 * (the only file rewritten in place). Old versioned files stay, so a device that read the old
 * timestamp a moment ago still finds the files it names.
 */
import { Metadata, Snapshot, Timestamp, Targets } from '@tufjs/models';
import { encodeMetadata, metaFileFor, signRole, writeRole, ISSUED_FIELD, SPEC_VERSION, type RepoState } from './metadata-files.js';
import { expiryAfter, type RepoPolicy } from './policy.js';
import { loadRoleKeys } from './role-keys.js';

export interface ChainOptions {
  repo: string;
  keys: string;
  now: Date;
  policy: RepoPolicy;
}

/** Signs and writes `targets` (a new version) plus a new snapshot and timestamp. */
export async function writeTargetsChain(state: RepoState, targets: Targets, o: ChainOptions): Promise<RepoState> {
  return writeSignedTargetsChain(state, await signTargets(state, targets, o.keys), o);
}

/**
 * Signs `targets` (a new version) with the targets keys and writes it, nothing else: what an
 * operator does for a fleet server that holds the online keys and writes snapshot and timestamp.
 */
export async function writeTargets(state: RepoState, targets: Targets, o: { repo: string; keys: string }): Promise<Metadata<Targets>> {
  const md = await signTargets(state, targets, o.keys);
  await writeRole(o.repo, `${targets.version}.targets.json`, encodeMetadata(md));
  return md;
}

async function signTargets(state: RepoState, targets: Targets, keys: string): Promise<Metadata<Targets>> {
  const md = new Metadata(targets);
  signRole(md, 'targets', state.root.signed, await loadRoleKeys(keys, 'targets'), keys);
  return md;
}

/** Writes signed targets metadata (checked by the caller when it was signed elsewhere), then a new snapshot and timestamp. */
export async function writeSignedTargetsChain(state: RepoState, targets: Metadata<Targets>, o: ChainOptions): Promise<RepoState> {
  const bytes = encodeMetadata(targets);
  await writeRole(o.repo, `${targets.signed.version}.targets.json`, bytes);
  return writeSnapshotChain({ ...state, targets }, metaFileFor(bytes, targets.signed.version), o);
}

/**
 * A new snapshot (pointing at `targetsMeta`, or the current targets again) and timestamp: what the
 * online keys re-sign periodically so devices keep seeing fresh metadata.
 */
export async function writeSnapshotChain(state: RepoState, targetsMeta: ReturnType<typeof metaFileFor> | undefined, o: ChainOptions): Promise<RepoState> {
  const snapshot = new Snapshot({
    specVersion: SPEC_VERSION,
    version: state.snapshot.signed.version + 1,
    expires: expiryAfter(o.now, o.policy.expires.snapshot),
    meta: { 'targets.json': targetsMeta ?? state.snapshot.signed.meta['targets.json'] },
  });
  const snapMd = new Metadata(snapshot);
  signRole(snapMd, 'snapshot', state.root.signed, await loadRoleKeys(o.keys, 'snapshot'), o.keys);
  const snapBytes = encodeMetadata(snapMd);
  await writeRole(o.repo, `${snapshot.version}.snapshot.json`, snapBytes);

  const timestamp = newTimestamp(state.timestamp.signed.version + 1, o.now, o.policy, metaFileFor(snapBytes, snapshot.version));
  const tsMd = new Metadata(timestamp);
  signRole(tsMd, 'timestamp', state.root.signed, await loadRoleKeys(o.keys, 'timestamp'), o.keys);
  await writeRole(o.repo, 'timestamp.json', encodeMetadata(tsMd));
  return { ...state, snapshot: snapMd, timestamp: tsMd };
}

export function newTimestamp(version: number, now: Date, policy: RepoPolicy, snapshotMeta: ReturnType<typeof metaFileFor>): Timestamp {
  return new Timestamp({
    specVersion: SPEC_VERSION,
    version,
    expires: expiryAfter(now, policy.expires.timestamp),
    snapshotMeta,
    unrecognizedFields: { [ISSUED_FIELD]: expiryAfter(now, 0) },
  });
}
