/**
 * Reading, signing and writing the four TUF roles in a repository folder (publisher side).
 * Signatures cover TUF's canonical JSON of `signed`, so the files are written pretty-printed;
 * snapshot and timestamp record each file's exact length and sha256.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Metadata, MetaFile, MetadataKind, type Root, type Snapshot, type Targets, type Timestamp } from '@tufjs/models';
import { EdgekitError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { metadataPath, type RoleName } from './layout.js';
import { signerFor, type RoleKey } from './role-keys.js';

export interface RepoState {
  root: Metadata<Root>;
  targets: Metadata<Targets>;
  snapshot: Metadata<Snapshot>;
  timestamp: Metadata<Timestamp>;
}

/** The signed "issued at" time the timestamp role adds: a lower bound on real time for devices. */
export const ISSUED_FIELD = 'edgekit_issued';

/** The TUF specification version our metadata follows (what @tufjs/models implements). */
export const SPEC_VERSION = '1.0.31';

export function encodeMetadata(md: Metadata<Root | Targets | Snapshot | Timestamp>): Buffer {
  return Buffer.from(JSON.stringify(md.toJSON(), null, 2) + '\n');
}

export function metaFileFor(bytes: Buffer, version: number): MetaFile {
  return new MetaFile({ version, length: bytes.length, hashes: { sha256: createHash('sha256').update(bytes).digest('hex') } });
}

export async function readState(repo: string): Promise<RepoState> {
  const root = await readRole(repo, 'root.json', MetadataKind.Root);
  const timestamp = await readRole(repo, 'timestamp.json', MetadataKind.Timestamp);
  const snapVersion = timestamp.signed.snapshotMeta.version;
  const snapshot = await readRole(repo, `${snapVersion}.snapshot.json`, MetadataKind.Snapshot);
  const targetsMeta = snapshot.signed.meta['targets.json'];
  if (!targetsMeta) throw new EdgekitError(`${metadataPath(repo, `${snapVersion}.snapshot.json`)}: no targets.json entry`);
  const targets = await readRole(repo, `${targetsMeta.version}.targets.json`, MetadataKind.Targets);
  return { root, targets, snapshot, timestamp };
}

export async function readRole<K extends MetadataKind>(repo: string, file: string, kind: K) {
  const path = metadataPath(repo, file);
  let data: unknown;
  try {
    data = JSON.parse(await readFile(path, 'utf8'));
  } catch (err) {
    throw new EdgekitError(`${path}: cannot read metadata (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    // The overloads of fromJSON need a concrete kind; the caller's K picks the result type.
    return Metadata.fromJSON(kind as MetadataKind.Root, data as never) as unknown as Metadata<
      K extends MetadataKind.Root ? Root : K extends MetadataKind.Targets ? Targets : K extends MetadataKind.Snapshot ? Snapshot : Timestamp
    >;
  } catch (err) {
    throw new EdgekitError(`${path}: not ${kind} metadata (${(err as Error).message})`);
  }
}

/**
 * Signs `md` for `role` with every available key that `root` lists for the role; refuses when
 * fewer than the role's threshold are available.
 */
export function signRole(md: Metadata<Root | Targets | Snapshot | Timestamp>, role: RoleName, root: Root, keys: RoleKey[], keysDir: string): void {
  const spec = root.roles[role];
  const usable = keys.filter((k) => spec.keyIDs.includes(k.tuf.keyID));
  const unique = [...new Map(usable.map((k) => [k.tuf.keyID, k])).values()];
  if (unique.length < spec.threshold) {
    throw new EdgekitError(`${keysDir}: ${unique.length} of the ${spec.threshold} ${role} keys needed to sign ${role} metadata are there`);
  }
  md.signatures = {};
  for (const k of unique) md.sign(signerFor(k));
}

export async function writeRole(repo: string, file: string, bytes: Buffer): Promise<void> {
  const path = metadataPath(repo, file);
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, bytes);
}
