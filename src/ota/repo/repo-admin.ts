/**
 * Creating a repository, rotating its root (and any role's keys), and re-signing metadata before
 * it expires. Publishing releases is in publish.ts.
 */
import { mkdir, stat } from 'node:fs/promises';
import { Metadata, Root, Snapshot, Targets, Timestamp, type Key } from '@tufjs/models';
import { EdgekitError } from '../../util/errors.js';
import { ROLES, metadataPath, type RoleName } from './layout.js';
import { encodeMetadata, metaFileFor, readState, writeRole, signRole, SPEC_VERSION } from './metadata-files.js';
import { DEFAULT_EXPIRES, expiryAfter, readPolicy, writePolicy, type RepoPolicy } from './policy.js';
import { generateRoleKeys, loadRoleKeys, retireKey, signerFor, type RoleKey } from './role-keys.js';
import { newTimestamp, writeSnapshotChain, writeTargetsChain } from './chain.js';

export interface RoleKeyCount {
  /** How many keys the role has. */
  keys: number;
  /** How many of them must sign. */
  threshold: number;
}

export interface InitRepoOptions {
  repo: string;
  keys: string;
  /** Per role; default 1 of 1 each. Root 2 of 3 is a sensible production choice. */
  roles?: Partial<Record<RoleName, RoleKeyCount>>;
  /** Seconds each role's metadata stays valid. */
  expires?: Partial<Record<RoleName, number>>;
  now?: Date;
}

export interface RepoSummary {
  repo: string;
  rootVersion: number;
  roles: Record<RoleName, { threshold: number; keyIds: string[] }>;
}

export async function initRepo(o: InitRepoOptions): Promise<RepoSummary> {
  const now = o.now ?? new Date();
  const rootFile = metadataPath(o.repo, 'root.json');
  if (await stat(rootFile).then(() => true, () => false)) throw new EdgekitError(`${rootFile}: already exists; this is a repository already`);
  const policy: RepoPolicy = { format: 'edgekit-repo/1', expires: { ...DEFAULT_EXPIRES, ...o.expires } };
  const keys: Partial<Record<RoleName, RoleKey[]>> = {};
  const roles: Record<string, RoleSpec> = {};
  const keyMap: Record<string, Key> = {};
  for (const role of ROLES) {
    const want = checkCount(role, o.roles?.[role] ?? { keys: 1, threshold: 1 });
    let have = await loadRoleKeys(o.keys, role);
    if (have.length === 0) have = await generateRoleKeys(o.keys, role, want.keys);
    else if (have.length < want.threshold) throw new EdgekitError(`${o.keys}: has ${have.length} ${role} keys, the threshold is ${want.threshold}`);
    keys[role] = have;
    for (const k of have) keyMap[k.tuf.keyID] = k.tuf;
    roles[role] = { keyIDs: have.map((k) => k.tuf.keyID), threshold: want.threshold };
  }
  const root = new Metadata(makeRoot(1, expiryAfter(now, policy.expires.root), keyMap, roles));
  signRole(root, 'root', root.signed, keys.root!, o.keys);
  const targets = new Metadata(new Targets({ specVersion: SPEC_VERSION, version: 1, expires: expiryAfter(now, policy.expires.targets) }));
  signRole(targets, 'targets', root.signed, keys.targets!, o.keys);
  const targetsBytes = encodeMetadata(targets);
  const snapshot = new Metadata(new Snapshot({ specVersion: SPEC_VERSION, version: 1, expires: expiryAfter(now, policy.expires.snapshot), meta: { 'targets.json': metaFileFor(targetsBytes, 1) } }));
  signRole(snapshot, 'snapshot', root.signed, keys.snapshot!, o.keys);
  const snapBytes = encodeMetadata(snapshot);
  const timestamp = new Metadata<Timestamp>(newTimestamp(1, now, policy, metaFileFor(snapBytes, 1)));
  signRole(timestamp, 'timestamp', root.signed, keys.timestamp!, o.keys);

  await mkdir(o.repo, { recursive: true });
  await writePolicy(o.repo, policy);
  await writeRole(o.repo, '1.targets.json', targetsBytes);
  await writeRole(o.repo, '1.snapshot.json', snapBytes);
  await writeRole(o.repo, 'timestamp.json', encodeMetadata(timestamp));
  await writeRole(o.repo, '1.root.json', encodeMetadata(root));
  await writeRole(o.repo, 'root.json', encodeMetadata(root));
  return summarize(o.repo, root.signed);
}

export interface RotateOptions {
  repo: string;
  keys: string;
  /** Roles whose keys are replaced by new ones (the old ones move to <keys>/retired/). */
  replace?: RoleName[];
  /** New key counts/thresholds for replaced roles, or a new threshold for any role. */
  roles?: Partial<Record<RoleName, RoleKeyCount>>;
  now?: Date;
}

/**
 * Writes root version N+1, signed by a threshold of the old root keys and of the new ones (so a
 * device holding root N can verify it). Without `replace` it only re-signs root with a fresh
 * expiry. Snapshot and timestamp (and targets, if its keys changed) are re-signed after.
 */
export async function rotateRoot(o: RotateOptions): Promise<RepoSummary> {
  const now = o.now ?? new Date();
  const policy = await readPolicy(o.repo);
  const state = await readState(o.repo);
  const old = state.root.signed;
  const replace = new Set(o.replace ?? []);
  const available = await loadRoleKeys(o.keys, 'root', true);
  const keyMap: Record<string, Key> = {};
  const roles: Record<string, RoleSpec> = {};
  const retiring: RoleKey[] = [];
  const fresh: RoleKey[] = [];
  for (const role of ROLES) {
    const current = old.roles[role];
    const want = o.roles?.[role];
    let ids = current.keyIDs;
    if (replace.has(role)) {
      const count = checkCount(role, want ?? { keys: ids.length, threshold: current.threshold });
      const made = await generateRoleKeys(o.keys, role, count.keys);
      fresh.push(...made);
      retiring.push(...(await loadRoleKeys(o.keys, role)).filter((k) => ids.includes(k.tuf.keyID)));
      ids = made.map((k) => k.tuf.keyID);
      for (const k of made) keyMap[k.tuf.keyID] = k.tuf;
    } else {
      for (const id of ids) keyMap[id] = old.keys[id];
    }
    const threshold = want?.threshold ?? current.threshold;
    if (threshold > ids.length) throw new EdgekitError(`${role}: threshold ${threshold} is more than its ${ids.length} keys`);
    roles[role] = { keyIDs: ids, threshold };
  }
  const root = new Metadata(makeRoot(old.version + 1, expiryAfter(now, policy.expires.root), keyMap, roles));
  // Signed by the old root role (devices trust it) and the new one (it must be self-signed).
  const signers = new Map<string, RoleKey>();
  for (const [rootRole, label] of [[old.roles.root, 'old'], [root.signed.roles.root, 'new']] as const) {
    const usable = [...available, ...fresh].filter((k) => rootRole.keyIDs.includes(k.tuf.keyID));
    const distinct = new Set(usable.map((k) => k.tuf.keyID));
    if (distinct.size < rootRole.threshold) {
      throw new EdgekitError(`${o.keys}: ${distinct.size} of the ${rootRole.threshold} ${label} root keys needed to sign root version ${old.version + 1} are there`);
    }
    for (const k of usable) signers.set(k.tuf.keyID, k);
  }
  for (const k of signers.values()) root.sign(signerFor(k));
  const bytes = encodeMetadata(root);
  await writeRole(o.repo, `${root.signed.version}.root.json`, bytes);
  await writeRole(o.repo, 'root.json', bytes);
  for (const k of retiring) await retireKey(o.keys, k);

  const next = { ...state, root };
  const chain = { repo: o.repo, keys: o.keys, now, policy };
  if (replace.has('targets')) await writeTargetsChain(next, bumpTargets(state.targets.signed, now, policy), chain);
  else await writeSnapshotChain(next, undefined, chain);
  return summarize(o.repo, root.signed);
}

export interface RefreshOptions {
  repo: string;
  keys: string;
  /** Also re-sign targets (offline key) with a fresh expiry. */
  targets?: boolean;
  now?: Date;
}

/** Re-signs snapshot and timestamp (the online roles), and targets if asked, with fresh expiries. */
export async function refreshMetadata(o: RefreshOptions): Promise<{ timestampVersion: number; expires: string }> {
  const now = o.now ?? new Date();
  const policy = await readPolicy(o.repo);
  const state = await readState(o.repo);
  const chain = { repo: o.repo, keys: o.keys, now, policy };
  const next = o.targets ? await writeTargetsChain(state, bumpTargets(state.targets.signed, now, policy), chain) : await writeSnapshotChain(state, undefined, chain);
  return { timestampVersion: next.timestamp.signed.version, expires: next.timestamp.signed.expires };
}

export async function describeRepo(repo: string): Promise<RepoSummary> {
  return summarize(repo, (await readState(repo)).root.signed);
}

export function bumpTargets(t: Targets, now: Date, policy: RepoPolicy, targets = t.targets): Targets {
  return new Targets({ specVersion: SPEC_VERSION, version: t.version + 1, expires: expiryAfter(now, policy.expires.targets), targets });
}

interface RoleSpec {
  keyIDs: string[];
  threshold: number;
}

/** Root built through its JSON form: @tufjs/models does not export its Role class. */
function makeRoot(version: number, expires: string, keys: Record<string, Key>, roles: Record<string, RoleSpec>): Root {
  return Root.fromJSON({
    _type: 'root',
    spec_version: SPEC_VERSION,
    version,
    expires,
    consistent_snapshot: true,
    keys: Object.fromEntries(Object.entries(keys).map(([id, k]) => [id, k.toJSON()])),
    roles: Object.fromEntries(Object.entries(roles).map(([name, r]) => [name, { keyids: r.keyIDs, threshold: r.threshold }])),
  });
}

function checkCount(role: RoleName, c: RoleKeyCount): RoleKeyCount {
  if (!Number.isInteger(c.keys) || !Number.isInteger(c.threshold) || c.threshold < 1 || c.keys < c.threshold) {
    throw new EdgekitError(`${role}: needs 1 <= threshold <= keys (got ${c.threshold} of ${c.keys})`);
  }
  return c;
}

function summarize(repo: string, root: Root): RepoSummary {
  const roles = Object.fromEntries(ROLES.map((r) => [r, { threshold: root.roles[r].threshold, keyIds: root.roles[r].keyIDs }])) as RepoSummary['roles'];
  return { repo, rootVersion: root.version, roles };
}
