/**
 * Where things live in a release repository. The repository is plain static files (any HTTP
 * server or CDN can serve the folder as is):
 *
 *   metadata/1.root.json ... N.root.json   every root version, so devices can walk key rotations
 *   metadata/root.json                     the newest root (for bootstrapping a new device image)
 *   metadata/timestamp.json                the only file that is rewritten in place
 *   metadata/<v>.snapshot.json, <v>.targets.json   consistent snapshots: old versions stay
 *   targets/<name>/<board>/<version>/<sha256>.<file>   payloads, named by content
 *   repo.json                              the publisher's expiry policy (not secret, not TUF)
 */
import { join } from 'node:path';

export const METADATA_DIR = 'metadata';
export const TARGETS_DIR = 'targets';
export const REPO_CONFIG = 'repo.json';

export type RoleName = 'root' | 'targets' | 'snapshot' | 'timestamp';
export const ROLES: RoleName[] = ['root', 'targets', 'snapshot', 'timestamp'];

export function metadataPath(repo: string, file: string): string {
  return join(repo, METADATA_DIR, file);
}

/** A target path ('gateway/qemu-x86_64/1.1/vmlinuz') -> its content-named file in the repository. */
export function targetFilePath(repo: string, targetPath: string, sha256: string): string {
  const slash = targetPath.lastIndexOf('/');
  const dir = slash >= 0 ? targetPath.slice(0, slash) : '';
  const base = targetPath.slice(slash + 1);
  return join(repo, TARGETS_DIR, dir, `${sha256}.${base}`);
}
