/**
 * What the running Linux system has mounted and swapped on, read from /proc: the facts that make a
 * drive unsafe to overwrite. Parsing only; src/flash/drives-linux.ts traces each entry to its disk.
 */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  /** "major:minor" of the filesystem's device; major 0 for btrfs, overlay, tmpfs and friends. */
  devno: string;
  mountpoint: string;
  fstype: string;
  /** The mount source as the kernel reports it (/dev/sda1, /dev/mapper/root, overlay, ...). */
  source: string;
  /** Filesystem-specific options (overlay's lowerdir/upperdir live here). */
  superOptions: string;
}

export interface SwapEntry {
  /** A device path (/dev/sda2) or a swap file's path. */
  filename: string;
  kind: 'partition' | 'file';
}

/** /proc escapes space, tab, newline and backslash in paths as \ooo octal. */
function unescapeProc(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parse /proc/<pid>/mountinfo (see proc(5)): the optional fields end at a lone "-". */
export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (dash < 0 || f.length < dash + 3) continue;
    out.push({
      devno: f[2],
      mountpoint: unescapeProc(f[4]),
      fstype: f[dash + 1],
      source: unescapeProc(f[dash + 2]),
      superOptions: f[dash + 3] ?? '',
    });
  }
  return out;
}

/** Parse /proc/swaps: a header line, then "Filename Type Size Used Priority" rows. */
export function parseSwaps(text: string): SwapEntry[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const f = l.split(/\s+/);
      return { filename: unescapeProc(f[0]), kind: f[1] === 'file' ? ('file' as const) : ('partition' as const) };
    });
}

export async function readMountinfo(path: string): Promise<MountEntry[]> {
  return parseMountinfo(await readFile(path, 'utf8'));
}

/** A missing /proc/swaps (a kernel without swap support) means nothing is swapped on. */
export async function readSwaps(path: string): Promise<SwapEntry[]> {
  try {
    return parseSwaps(await readFile(path, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** The mount whose mountpoint contains `path` (the deepest, and the last one mounted there). */
export function mountContaining(mounts: MountEntry[], path: string): MountEntry | undefined {
  let best: MountEntry | undefined;
  for (const m of mounts) {
    const mp = m.mountpoint;
    const inside = mp === '/' || path === mp || path.startsWith(mp + '/');
    if (inside && (!best || mp.length >= best.mountpoint.length)) best = m;
  }
  return best;
}

/** Overlay layers (upperdir, lowerdir list) whose own mounts lead to the disk under an overlay. */
export function overlayLayers(m: MountEntry): string[] {
  const dirs: string[] = [];
  for (const opt of m.superOptions.split(',')) {
    const eq = opt.indexOf('=');
    if (eq < 0) continue;
    const [k, v] = [opt.slice(0, eq), opt.slice(eq + 1)];
    if (k === 'upperdir' || k === 'workdir') dirs.push(v);
    if (k === 'lowerdir') dirs.push(...v.split(':').filter(Boolean));
  }
  return dirs;
}
