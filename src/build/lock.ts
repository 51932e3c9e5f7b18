/**
 * The lock file: every package a build used, with version, .deb sha256 and dependencies, so a
 * later build can pin to exactly these (and, with the cache warm, needs no network).
 */
import { readFile } from 'node:fs/promises';
import type { LockFile, ResolvedPackage } from '../packages/types.js';
import { EdgekitError } from '../util/errors.js';

export const LOCK_FORMAT = 'edgekit-lock/1';

export interface BuildLock extends LockFile {
  format: typeof LOCK_FORMAT;
  suite: string;
  arch: string;
  packages: ResolvedPackage[];
}

export async function readLock(path: string): Promise<BuildLock> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new EdgekitError(`${path}: cannot read lock file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let lock: BuildLock;
  try {
    lock = JSON.parse(text);
  } catch (err) {
    throw new EdgekitError(`${path}: not a lock file (${(err as Error).message})`);
  }
  if (lock.format !== LOCK_FORMAT || !Array.isArray(lock.packages)) throw new EdgekitError(`${path}: not an ${LOCK_FORMAT} file`);
  return lock;
}

export function formatLock(lock: BuildLock): string {
  const packages = [...lock.packages].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return JSON.stringify({ ...lock, packages }, null, 2) + '\n';
}
