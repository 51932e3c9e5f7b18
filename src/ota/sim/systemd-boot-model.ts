/**
 * A model of systemd-boot's boot counting, as the simulator's firmware: it reads the ESP as it is
 * after a power cut, picks an entry the way systemd-boot does, spends one try by renaming the
 * entry (a write that can itself be cut), then starts it through startSlotKernel (kernel-start.ts).
 *
 * Selection, as systemd-boot does with no default configured: entries with no tries left sort
 * after all others; then by id (the file name without the counter) in version order, highest
 * first; then more tries left first, then fewer tries done first. The first entry boots.
 * The counter rename: +L-D -> +(L-1)-(D+1), never below +0.
 */
import { FatReader } from '../../fs/fat-reader.js';
import { FatVolume } from '../../fs/fat-edit.js';
import type { SimDisk } from './sim-disk.js';
import type { SimLayout } from './layout.js';
import { startSlotKernel, type BootAttempt, type FirmwareOptions } from './kernel-start.js';

export interface ModelEntry {
  file: string;
  id: string;
  left?: number;
  done?: number;
}

const COUNTER = /^(.*?)(?:\+(\d+)(?:-(\d+))?)?\.conf$/;

export function parseModelEntry(file: string): ModelEntry | undefined {
  if (!file.toLowerCase().endsWith('.conf')) return undefined;
  const m = COUNTER.exec(file)!;
  return { file, id: `${m[1]}.conf`.toLowerCase(), left: m[2] === undefined ? undefined : Number(m[2]), done: m[2] === undefined ? undefined : Number(m[3] ?? 0) };
}

/** Version comparison: runs of digits compare as numbers, everything else byte by byte. */
export function versionCompare(a: string, b: string): number {
  const parts = (s: string) => s.match(/\d+|\D+/g) ?? [];
  const pa = parts(a);
  const pb = parts(b);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i];
    const y = pb[i];
    const dx = /^\d/.test(x);
    const dy = /^\d/.test(y);
    if (dx && dy) {
      const nx = BigInt(x);
      const ny = BigInt(y);
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  return pa.length - pb.length;
}

export function sortEntries(entries: ModelEntry[]): ModelEntry[] {
  const bad = (e: ModelEntry) => (e.left === 0 ? 1 : 0);
  return [...entries].sort(
    (x, y) => bad(x) - bad(y) || -versionCompare(x.id, y.id) || (y.left ?? 0) - (x.left ?? 0) || (x.done ?? 0) - (y.done ?? 0),
  );
}

export type { BootAttempt, FirmwareOptions };

/** One power-on of a systemd-boot device: choose, count, then start the slot or fail. */
export async function systemdBootAttempt(disk: SimDisk, layout: SimLayout, opts: FirmwareOptions): Promise<BootAttempt> {
  if (disk.unsyncedWrites) throw new Error('the firmware starts with an empty write cache');
  const reader = await FatReader.open(disk.path, layout.boot.start);
  let chosen: ModelEntry | undefined;
  let conf: string;
  try {
    const files = (await reader.list()).filter((e) => !e.isDir && e.path.toLowerCase().startsWith('loader/entries/'));
    const entries = files.map((e) => parseModelEntry(e.name)).filter((e): e is ModelEntry => !!e);
    chosen = sortEntries(entries)[0];
    if (!chosen) return { booted: false, reason: 'no boot entries' };
    conf = (await reader.readFile(`loader/entries/${chosen.file}`)).toString('utf8');
  } finally {
    await reader.close();
  }
  if (chosen.left !== undefined) {
    // systemd-boot spends the try before it starts the kernel.
    const next = chosen.file.replace(/\+\d+(?:-\d+)?\.conf$/, `+${Math.max(0, chosen.left - 1)}-${(chosen.done ?? 0) + 1}.conf`);
    const esp = await FatVolume.open(disk, layout.boot.start);
    await esp.rename(`loader/entries/${chosen.file}`, `loader/entries/${next}`);
  }
  const fields = new Map<string, string>();
  for (const line of conf.split('\n')) {
    const m = /^(\S+)\s+(.*)$/.exec(line.trim());
    if (m) fields.set(m[1], m[2]);
  }
  const kernelPath = (fields.get('linux') ?? '').replace(/^\//, '');
  const initrdPath = fields.get('initrd')?.replace(/^\//, '');
  const files = await FatReader.open(disk.path, layout.boot.start);
  let kernel: Buffer | undefined;
  let initrdMissing: string | undefined;
  try {
    kernel = await files.readFile(kernelPath).catch(() => undefined);
    if (initrdPath && !(await files.readFile(initrdPath).catch(() => undefined))) initrdMissing = initrdPath;
  } finally {
    await files.close();
  }
  return startSlotKernel(disk, layout, { entry: chosen.file, kernelName: kernelPath, kernel, initrdMissing, cmdline: fields.get('options') ?? '' }, opts);
}
