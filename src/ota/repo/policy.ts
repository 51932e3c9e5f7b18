/**
 * The publisher's policy: how long each role's metadata stays valid. Kept in repo.json next to
 * the metadata so every command that re-signs a role uses the same periods.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { EdgekitError } from '../../util/errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { REPO_CONFIG, type RoleName } from './layout.js';

const DAY = 86400;

const policySchema = z.object({
  format: z.literal('edgekit-repo/1'),
  /** Seconds each role's metadata is valid after it is signed. */
  expires: z.object({
    root: z.number().int().positive(),
    targets: z.number().int().positive(),
    snapshot: z.number().int().positive(),
    timestamp: z.number().int().positive(),
  }),
});
export type RepoPolicy = z.infer<typeof policySchema>;

/**
 * Root and targets are signed offline, so they live long; snapshot and timestamp are re-signed
 * by the online fleet server, so a short timestamp period bounds how long a freeze can go unseen.
 */
export const DEFAULT_EXPIRES: Record<RoleName, number> = {
  root: 365 * DAY,
  targets: 90 * DAY,
  snapshot: 7 * DAY,
  timestamp: 1 * DAY,
};

export async function readPolicy(repo: string): Promise<RepoPolicy> {
  const path = join(repo, REPO_CONFIG);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new EdgekitError(`${path}: not found; is ${repo} a release repository (edgekit repo init)?`);
  }
  const parsed = policySchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new EdgekitError(`${path}: ${parsed.error.issues[0]?.path.join('.')}: ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

export async function writePolicy(repo: string, policy: RepoPolicy): Promise<void> {
  await writeFileAtomic(join(repo, REPO_CONFIG), JSON.stringify(policy, null, 2) + '\n');
}

/** TUF's expiry format: UTC, whole seconds. */
export function expiryAfter(now: Date, seconds: number): string {
  return new Date(Math.floor(now.getTime() / 1000) * 1000 + seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
}
