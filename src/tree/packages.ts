/**
 * Unpacked Debian packages -> tree entries. Debian trixie is merged-/usr: top-level bin, sbin and
 * lib are symlinks into usr/, so package paths under them are placed under usr/ (never by following
 * a link at write time). Documentation, manuals and translations are left out: nothing on a device
 * reads them, and they would be most of a small image.
 */
import { toTreeEntry, type UnpackedDeb } from '../packages/deb.js';
import type { Tree } from './tree.js';

const MERGED = ['bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'];

export function addUsrMergeLinks(tree: Tree): void {
  for (const d of ['bin', 'sbin', 'lib', 'lib64']) tree.symlink(d, `usr/${d}`);
  for (const d of ['usr/bin', 'usr/sbin', 'usr/lib', 'usr/lib64']) tree.dir(d);
}

export function usrMergedPath(path: string): string {
  const top = path.split('/', 1)[0];
  return MERGED.includes(top) ? `usr/${path}` : path;
}

const TRIMMED = [
  /^usr\/share\/(man|info|locale|lintian|linda|bug|bash-completion|zsh|fish|menu|gtk-doc)\//,
  /^usr\/share\/doc\/[^/]+\/(?!copyright$)/, // keep each package's copyright notice
  /^usr\/share\/doc-base\//,
];

export function isTrimmed(path: string): boolean {
  return TRIMMED.some((re) => re.test(path));
}

export interface AddPackageOptions {
  /** Only these paths (after usr-merge mapping). */
  filter?: (path: string) => boolean;
  trim?: boolean;
}

export function addPackage(tree: Tree, pkg: UnpackedDeb, opts: AddPackageOptions = {}): void {
  for (const e of pkg.entries) {
    if (e.path === '' || MERGED.includes(e.path)) continue;
    const path = usrMergedPath(e.path);
    if (opts.trim !== false && isTrimmed(path)) continue;
    if (opts.filter && !opts.filter(path)) continue;
    // A package's own merged-usr compat links (e.g. lib64/ld-linux...) land in usr/ like files.
    tree.add(toTreeEntry(e, path));
  }
}
