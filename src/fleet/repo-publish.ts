/**
 * Publishing to the fleet server over its admin API, in TUF's split of keys: the operator signs
 * targets metadata offline and sends it with the target files it names; the server, which holds
 * the online keys only, checks it against the repository's root and writes snapshot and
 * timestamp over it. The server can thus add nothing to a release: a targets file it was not
 * given signed by the operator fails every device's check.
 *
 * Target files arrive one by one (PUT), each streamed to a temporary file while it is hashed and
 * kept only when its bytes hash to the sha256 in its content name. The targets metadata comes
 * last (POST): accepted when it is the next version, signed by a threshold of the root's targets
 * keys, unexpired, and every file it names is on disk with its length and sha256.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { copyFile, link, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import type { IncomingMessage } from 'node:http';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Metadata, MetadataKind, type Targets } from '@tufjs/models';
import { TARGETS_DIR, targetFilePath } from '../ota/repo/layout.js';
import { readState, type RepoState } from '../ota/repo/metadata-files.js';
import { readPolicy } from '../ota/repo/policy.js';
import { writeSignedTargetsChain } from '../ota/repo/chain.js';
import { sha256OfFile } from '../util/hash.js';
import { fsyncDir } from '../util/atomic.js';
import { FleetError } from './service.js';
import type { RepoSigner } from './repo-signer.js';

/** `<dirs>/<sha256>.<file>` below targets/: plain segments, none starting with a dot. */
const UPLOAD_PATH = /^([A-Za-z0-9_][A-Za-z0-9._+-]*\/)*([0-9a-f]{64})\.[A-Za-z0-9_][A-Za-z0-9._+-]*$/;
/** A target path in metadata: plain segments, as publish.ts makes them. */
const TARGET_PATH = /^([A-Za-z0-9_][A-Za-z0-9._+-]*\/)*[A-Za-z0-9_][A-Za-z0-9._+-]*$/;
/** PUT header naming a file already on the server (below targets/) whose bytes the new name gets. */
export const COPY_OF_HEADER = 'x-edgekit-copy-of';
/** How long a publish waits for another server's re-signing to end before it answers 503. */
const LEASE_WAIT_MS = 30_000;

export interface StoredTarget {
  /** The path below targets/ (content-named). */
  path: string;
  length: number;
  sha256: string;
  /** False when the file was there already (nothing was written). */
  stored: boolean;
}

/** The sha256 in a content-named path below targets/, or a 400 naming it. */
function shaOfName(rel: string): string {
  const m = UPLOAD_PATH.exec(rel);
  if (!m || rel.split('/').some((s) => s === '..')) throw new FleetError(400, `targets/${rel}: not a content-named target file (<dirs>/<sha256>.<name>, plain characters)`);
  return m[2];
}

/**
 * Stores the request body as the target file `rel` (below targets/) of `repo` when its bytes hash
 * to the sha256 in its name; the temporary file is removed whatever goes wrong. With `copyOf` (a
 * file below targets/ with the same sha256 in its name, as a republished release reuses) the body
 * is empty and that file is linked under the new name instead.
 */
export async function receiveTarget(repo: string, rel: string, req: IncomingMessage, copyOf?: string): Promise<StoredTarget> {
  let sha256: string;
  try {
    sha256 = shaOfName(rel);
    if (copyOf !== undefined && shaOfName(copyOf) !== sha256) throw new FleetError(400, `targets/${copyOf}: has another sha256 in its name than targets/${rel}; not a copy of it`);
  } catch (err) {
    req.resume();
    throw err;
  }
  const dest = join(repo, TARGETS_DIR, rel);
  const present = await stat(dest).catch(() => null);
  if (present?.isFile()) {
    // Content-named: a file there has these bytes (it was checked when it was stored).
    req.resume();
    return { path: rel, length: present.size, sha256, stored: false };
  }
  // Beside the targets on the same filesystem (so the rename is atomic), and a dot-file: never served.
  const tmp = join(repo, TARGETS_DIR, `.upload-${randomBytes(8).toString('hex')}.tmp`);
  if (copyOf !== undefined) {
    req.resume();
    const src = join(repo, TARGETS_DIR, copyOf);
    const st = await stat(src).catch(() => null);
    if (!st?.isFile()) throw new FleetError(400, `targets/${copyOf}: not on the server; upload targets/${rel} itself`);
    try {
      await link(src, tmp).catch(() => copyFile(src, tmp));
      await mkdir(dirname(dest), { recursive: true });
      await rename(tmp, dest);
      await fsyncDir(dirname(dest));
    } finally {
      await rm(tmp, { force: true });
    }
    return { path: rel, length: st.size, sha256, stored: true };
  }
  const hash = createHash('sha256');
  let length = 0;
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      length += chunk.length;
      done(null, chunk);
    },
  });
  try {
    await mkdir(join(repo, TARGETS_DIR), { recursive: true });
    const out = createWriteStream(tmp, { flags: 'wx' });
    try {
      await pipeline(req, hashing, out);
    } catch (err) {
      throw new FleetError(400, `targets/${rel}: upload not received whole (${(err as Error).message})`);
    }
    const got = hash.digest('hex');
    if (got !== sha256) throw new FleetError(400, `targets/${rel}: the ${length} bytes sent hash to sha256 ${got}, not the ${sha256} in the name; nothing stored`);
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await mkdir(dirname(dest), { recursive: true });
    await rename(tmp, dest);
    await fsyncDir(dirname(dest));
    return { path: rel, length, sha256, stored: true };
  } finally {
    await rm(tmp, { force: true });
  }
}

export interface PublishedTargets {
  targetsVersion: number;
  timestampVersion: number;
  /** Target paths that the previous targets metadata did not list (or listed with other content). */
  added: string[];
}

/**
 * Checks signed targets metadata sent by an operator (see the file comment) and, holding the
 * repository lease, writes it with a new snapshot and timestamp signed by the server's online keys.
 */
export async function publishTargets(signer: RepoSigner, body: unknown, now = new Date()): Promise<PublishedTargets> {
  let md: Metadata<Targets>;
  try {
    md = Metadata.fromJSON(MetadataKind.Targets, body as never);
  } catch (err) {
    throw new FleetError(400, `body: not TUF targets metadata (${(err as Error).message})`);
  }
  const repo = signer.repo;
  // The expensive checks (hashing new files) run before the lease; the version is checked again under it.
  const before = await readState(repo);
  checkNext(before, md);
  checkSigned(before, md, now);
  const added = await checkFiles(repo, before, md);
  const r = await signer.exclusive(async () => {
    const state = await readState(repo);
    checkNext(state, md);
    checkSigned(state, md, now);
    const policy = await readPolicy(repo);
    return writeSignedTargetsChain(state, md, { repo, keys: signer.keys, now, policy });
  }, LEASE_WAIT_MS);
  if (r === 'busy') throw new FleetError(503, 'another server is writing the repository\'s metadata (it holds the signing lease); try again in a minute');
  return { targetsVersion: md.signed.version, timestampVersion: r.timestamp.signed.version, added };
}

function checkNext(state: RepoState, md: Metadata<Targets>): void {
  const current = state.targets.signed.version;
  if (md.signed.version !== current + 1) {
    throw new FleetError(409, `targets version ${md.signed.version}: the repository is at version ${current}, so only ${current + 1} is taken (someone published meanwhile? sign again on top of the server's metadata)`);
  }
}

function checkSigned(state: RepoState, md: Metadata<Targets>, now: Date): void {
  try {
    state.root.verifyDelegate('targets', md);
  } catch (err) {
    const role = state.root.signed.roles.targets;
    throw new FleetError(400, `targets metadata: not signed by ${role.threshold} of the targets keys of root version ${state.root.signed.version} (${(err as Error).message})`);
  }
  if (md.signed.isExpired(now)) throw new FleetError(400, `targets metadata: expired at ${md.signed.expires}`);
}

/**
 * Every target file the metadata names must be on disk with its length; the ones the current
 * metadata does not already list with that content are hashed too (the rest were when published).
 */
async function checkFiles(repo: string, state: RepoState, md: Metadata<Targets>): Promise<string[]> {
  const known = state.targets.signed.targets;
  const added: string[] = [];
  for (const t of Object.values(md.signed.targets)) {
    const sha256 = t.hashes.sha256;
    if (!TARGET_PATH.test(t.path)) throw new FleetError(400, `target ${t.path}: not a plain path (letters, digits, . _ + - between slashes)`);
    if (!sha256 || !/^[0-9a-f]{64}$/.test(sha256)) throw new FleetError(400, `target ${t.path}: no sha256 hash`);
    const file = targetFilePath(repo, t.path, sha256);
    const rel = file.slice(join(repo, TARGETS_DIR).length + 1);
    const st = await stat(file).catch(() => null);
    if (!st?.isFile()) throw new FleetError(400, `target ${t.path}: not on the server (upload it first: PUT /v1/admin/repo/targets/${rel})`);
    if (st.size !== t.length) throw new FleetError(400, `target ${t.path}: the server's file has ${st.size} bytes, the metadata says ${t.length}`);
    const old = known[t.path];
    if (old && old.hashes.sha256 === sha256 && old.length === t.length) continue;
    added.push(t.path);
    const got = await sha256OfFile(file);
    if (got !== sha256) throw new FleetError(400, `target ${t.path}: the server's file hashes to sha256 ${got}, the metadata says ${sha256}`);
  }
  return added;
}
