import { open, rename, rm } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';

/** A temp path beside `path`, so the final rename stays on one filesystem. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now().toString(36)}.tmp`);
}

/** fsync a directory so a rename inside it survives a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * Write `path` all-or-nothing: `produce` writes to a temp file, which is fsynced and renamed over
 * `path` only when `produce` succeeds; on failure the temp file is removed.
 */
export async function writeAtomic(path: string, produce: (tmpPath: string) => Promise<void>): Promise<void> {
  const tmp = tempPathFor(path);
  try {
    await produce(tmp);
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    await fsyncDir(dirname(path));
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await writeAtomic(path, async (tmp) => {
    const fh = await open(tmp, 'w', mode);
    try {
      await fh.writeFile(data);
    } finally {
      await fh.close();
    }
  });
}
