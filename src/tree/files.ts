import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Tree } from './tree.js';

/**
 * Copies a host folder into the tree under `prefix`: files by reference (read when written out),
 * symlinks as symlinks (never followed), owner root, mode 0755 for executables and dirs, else 0644.
 * Host ownership and umask never leak into an image.
 */
export async function addHostFolder(tree: Tree, dir: string, prefix = ''): Promise<void> {
  const names = (await readdir(dir)).sort();
  for (const name of names) {
    const src = join(dir, name);
    const path = prefix ? `${prefix}/${name}` : name;
    const st = await lstat(src);
    if (st.isSymbolicLink()) tree.symlink(path, await readlink(src));
    else if (st.isDirectory()) {
      tree.dir(path, 0o755);
      await addHostFolder(tree, src, path);
    } else if (st.isFile()) {
      tree.add({ path, type: 'file', mode: st.mode & 0o111 ? 0o755 : 0o644, uid: 0, gid: 0, content: { kind: 'file', path: src, size: st.size } });
    }
  }
}
