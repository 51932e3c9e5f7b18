/**
 * The operator's side of publishing to a fleet server over HTTP (the server's side is
 * repo-publish.ts). The server's current metadata is mirrored into a temporary folder, checked
 * against its root, and the release is made there with publishRelease in targets-only mode: the
 * operator's targets key signs, no snapshot or timestamp key is needed. The new files go up (only
 * those the server lacks), then the targets metadata; the server writes snapshot and timestamp.
 */
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Key, Metadata, Root, TargetFile, Targets } from '@tufjs/models';
import { EdgekitError } from '../util/errors.js';
import { REPO_CONFIG, metadataPath, targetFilePath } from '../ota/repo/layout.js';
import { readState } from '../ota/repo/metadata-files.js';
import { publishRelease, republishRelease, withdrawRelease, type PublishOptions, type Release, type RepublishOptions, type WithdrawOptions } from '../ota/repo/publish.js';
import { verifiedStream } from '../ota/repo/fetchers.js';
import { loadRolePublicKeys } from '../ota/repo/role-keys.js';
import type { FleetAdminClient } from './admin-client.js';

export interface RemotePublishOptions extends Omit<PublishOptions, 'repo' | 'targetsOnly' | 'fetchTarget'> {
  /** A client whose token has operator scope (checked by the caller before anything is signed). */
  client: FleetAdminClient;
  /** Told how uploads and downloads go, in plain lines. */
  onProgress?: (line: string) => void;
  /** Where the temporary mirror goes (default: the system's temporary folder). */
  workDir?: string;
}

/** What the server did: the versions it wrote, and which files went up (the others it had). */
export interface ServerResult {
  targetsVersion: number;
  timestampVersion: number;
  uploaded: string[];
  present: string[];
}

export interface RemoteRelease extends Release {
  server: ServerResult;
}

/** Files this big or bigger get progress lines while they move. */
const PROGRESS_MIN_BYTES = 8 << 20;

export async function publishRemote(o: RemotePublishOptions): Promise<RemoteRelease> {
  const progress = o.onProgress ?? (() => {});
  return onServer(o.client, o.keys, o.workDir, progress, (work) =>
    publishRelease({ ...o, repo: work, targetsOnly: true, fetchTarget: (t, file) => download(o.client, relative(work, file).split('\\').join('/'), t, file, progress) }));
}

export interface RemoteRepublishOptions extends Omit<RepublishOptions, 'repo' | 'targetsOnly'> {
  client: FleetAdminClient;
  onProgress?: (line: string) => void;
  workDir?: string;
}

/** A fleet rollback on the server: the old release's files get their new names there, no bytes are sent. */
export async function republishRemote(o: RemoteRepublishOptions): Promise<RemoteRelease> {
  return onServer(o.client, o.keys, o.workDir, o.onProgress ?? (() => {}), (work) => republishRelease({ ...o, repo: work, targetsOnly: true }));
}

export interface RemoteWithdrawOptions extends Omit<WithdrawOptions, 'repo' | 'targetsOnly'> {
  client: FleetAdminClient;
  workDir?: string;
}

/** Withdraws a release on the server: new targets metadata without it (no files move). */
export async function withdrawRemote(o: RemoteWithdrawOptions): Promise<{ withdrawn: Release[]; server: ServerResult }> {
  const r = await onServer(o.client, o.keys, o.workDir, () => {}, async (work) => ({ files: [], withdrawn: await withdrawRelease({ ...o, repo: work, targetsOnly: true }) }));
  return { withdrawn: r.withdrawn, server: r.server };
}

/**
 * Makes a change in a mirror of the server's metadata with `change`, then sends the server the
 * files it lacks (uploaded from the mirror, or, when the mirror has none, linked on the server
 * from a file it has with the same content) and the new targets metadata.
 */
async function onServer<T extends { files: Release['files'] }>(
  client: FleetAdminClient, keysDir: string, workDir: string | undefined, progress: (line: string) => void, change: (work: string) => Promise<T>,
): Promise<T & { server: ServerResult }> {
  const work = await mkdtemp(join(workDir ?? tmpdir(), 'edgekit-publish-'));
  try {
    const before = await mirrorMetadata(client, work, keysDir);
    const release = await change(work);
    const relOf = (path: string, sha256: string) => relative(work, targetFilePath(work, path, sha256)).split('\\').join('/');
    const uploaded: string[] = [];
    const present: string[] = [];
    for (const f of release.files) {
      const file = targetFilePath(work, f.path, f.sha256);
      const rel = relOf(f.path, f.sha256);
      if ((await client.repoFileSize(rel)) === f.length) {
        present.push(f.path);
        continue;
      }
      if (existsSync(file)) {
        await upload(client, rel, f.path, file, f.length, progress);
      } else {
        const same = Object.values(before.targets).find((t) => t.hashes.sha256 === f.sha256 && t.length === f.length);
        if (!same) throw new EdgekitError(`${f.path}: neither here nor on the fleet server (no target there has sha256 ${f.sha256})`);
        await client.copyTarget(rel, relOf(same.path, f.sha256));
      }
      uploaded.push(f.path);
    }
    const targets = JSON.parse(await readFile(metadataPath(work, `${before.version + 1}.targets.json`), 'utf8')) as unknown;
    const r = await client.publishTargets(targets);
    return { ...release, server: { ...r, uploaded, present } };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Copies the server's current repo.json, root, timestamp, snapshot and targets metadata into
 * `dir` and checks them (the release is signed on top of this targets metadata: a server that
 * changed it would get the operator to sign its changes); returns the targets.
 */
async function mirrorMetadata(client: FleetAdminClient, dir: string, keysDir: string): Promise<Targets> {
  const fetchTo = async (rel: string): Promise<Buffer> => {
    const bytes = Buffer.from(await (await client.repoFile(rel)).arrayBuffer());
    await mkdir(dirname(join(dir, rel)), { recursive: true });
    await writeFile(join(dir, rel), bytes);
    return bytes;
  };
  const json = (b: Buffer, what: string) => {
    try {
      return JSON.parse(b.toString('utf8')) as { signed: { meta?: Record<string, { version?: number }> } };
    } catch {
      throw new EdgekitError(`the fleet server's ${what}: not JSON`);
    }
  };
  await fetchTo(REPO_CONFIG);
  await fetchTo('metadata/root.json');
  const timestamp = json(await fetchTo('metadata/timestamp.json'), 'timestamp.json');
  const snapVersion = timestamp.signed.meta?.['snapshot.json']?.version;
  if (!Number.isInteger(snapVersion)) throw new EdgekitError('the fleet server\'s timestamp.json names no snapshot version');
  const snapshot = json(await fetchTo(`metadata/${snapVersion}.snapshot.json`), `${snapVersion}.snapshot.json`);
  const targetsVersion = snapshot.signed.meta?.['targets.json']?.version;
  if (!Number.isInteger(targetsVersion)) throw new EdgekitError(`the fleet server's ${snapVersion}.snapshot.json names no targets version`);
  await fetchTo(`metadata/${targetsVersion}.targets.json`);
  const state = await readState(dir);
  // The operator's root keys (public halves will do) anchor the server's root: a server that made
  // up a root naming its own targets key could otherwise slip targets into what the operator signs.
  const anchors = await loadRolePublicKeys(keysDir, 'root');
  if (!anchors.length) throw new EdgekitError(`${keysDir}: no root key (root-<n>.key or its .pub): it is needed to check the fleet server's root before signing on top of its metadata`);
  if (!anchors.some((k) => signedBy(k, state.root))) {
    throw new EdgekitError(`the fleet server's root (version ${state.root.signed.version}) is signed by none of the root keys in ${keysDir}; not publishing on top of it`);
  }
  for (const role of ['timestamp', 'snapshot', 'targets'] as const) {
    try {
      state.root.verifyDelegate(role, state[role]);
    } catch (err) {
      throw new EdgekitError(`the fleet server's ${role} metadata is not signed by the ${role} keys of its root (${(err as Error).message}); not publishing on top of it`);
    }
  }
  return state.targets.signed;
}

function signedBy(key: Key, md: Metadata<Root>): boolean {
  try {
    key.verifySignature(md);
    return true;
  } catch {
    return false;
  }
}

/** Streams a local target file to the server, with progress lines for big ones. */
async function upload(client: FleetAdminClient, rel: string, what: string, file: string, length: number, progress: (line: string) => void): Promise<void> {
  const counted = counter(`uploading ${what}`, length, progress);
  const body = Readable.toWeb(createReadStream(file).pipe(counted)) as ReadableStream<Uint8Array>;
  await client.uploadTarget(rel, body);
}

/** Fetches an existing target from the server into `file`, checked against its signed length and sha256. */
async function download(client: FleetAdminClient, rel: string, t: TargetFile, file: string, progress: (line: string) => void): Promise<void> {
  const res = await client.repoFile(rel);
  if (!res.body) throw new EdgekitError(`the fleet server sent no body for ${rel}`);
  const tmp = `${file}.part`;
  try {
    await pipeline(verifiedStream(res.body, t.length, t.hashes.sha256, `the fleet server's ${rel}`), counter(`downloading ${t.path}`, t.length, progress), createWriteStream(tmp));
    await rename(tmp, file);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** A pass-through that says every tenth of `length` how far it got (for files of PROGRESS_MIN_BYTES or more). */
function counter(what: string, length: number, progress: (line: string) => void): Transform {
  let seen = 0;
  let told = 0;
  const mib = (n: number) => (n / (1 << 20)).toFixed(1);
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      seen += chunk.length;
      const tenth = length ? Math.floor((seen * 10) / length) : 10;
      if (length >= PROGRESS_MIN_BYTES && tenth > told) {
        told = tenth;
        progress(`${what}: ${tenth * 10}% (${mib(seen)} of ${mib(length)} MiB)`);
      }
      done(null, chunk);
    },
  });
}
