/**
 * Writes an edgekit Tree out as real files so host tools (mksquashfs, mkfs.erofs, mcopy, cpio) can
 * read the same content our writers read from memory and the package cache. Modes are set
 * explicitly (no umask dependence); owners only when running as root. Device nodes and fifos
 * cannot be made from Node without root tools, so they are counted and left out.
 */
import { chmod, copyFile, lchown, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export async function materializeTree(tree, dir) {
  const asRoot = process.getuid?.() === 0;
  const skipped = [];
  const dirs = [];
  await mkdir(dir, { recursive: true });
  for (const e of tree.list()) {
    const dest = e.path === '' ? dir : join(dir, e.path);
    if (e.type === 'dir') {
      await mkdir(dest, { recursive: true });
      dirs.push(e);
    } else if (e.type === 'file') {
      if (e.content.kind === 'buffer') await writeFile(dest, e.content.data);
      else await copyFile(e.content.path, dest);
      await chmod(dest, e.mode);
    } else if (e.type === 'symlink') {
      await symlink(e.target, dest);
    } else {
      skipped.push(e.path);
      continue;
    }
    if (asRoot) await lchown(dest, e.uid, e.gid);
  }
  // Directory modes last: a read-only directory would refuse its own children.
  for (const e of dirs.reverse()) await chmod(e.path === '' ? dir : join(dir, e.path), e.mode);
  return { skipped };
}
