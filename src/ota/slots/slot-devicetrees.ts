/**
 * A release's device trees in a Raspberry Pi slot folder on the boot partition (U-Boot's boot.scr
 * loads ${fdtfile} from there; the Pi firmware reads the board's tree under os_prefix).
 */
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';

/** A tree's path inside the slot folder: plain segments, no way out of the folder. */
const TREE_PATH = /^(?:[A-Za-z0-9_][A-Za-z0-9._+-]*\/)*[A-Za-z0-9_][A-Za-z0-9._+-]*\.dtb$/i;

/**
 * Writes a release's device trees into the slot folder by their paths inside it, each replacing the
 * file there whole; the ones an older release left there that this one does not carry go first.
 */
export async function writeSlotDevicetrees(boot: FatVolume, dir: string, devicetrees: Record<string, Buffer> | undefined): Promise<void> {
  if (!devicetrees || !Object.keys(devicetrees).length) return;
  // Signed release data, but a path that leaves the slot folder could overwrite the boot chain.
  for (const rel of Object.keys(devicetrees)) if (!TREE_PATH.test(rel)) throw new EdgekitError(`release device tree "${rel}": not a .dtb path inside the slot folder`);
  const keep = new Set(Object.keys(devicetrees).map((rel) => `${dir}/${rel}`.toLowerCase()));
  for (const path of await dtbsUnder(boot, dir)) if (!keep.has(path.toLowerCase())) await boot.remove(path);
  for (const [rel, data] of Object.entries(devicetrees)) {
    if (rel.includes('/')) await boot.mkdir(`${dir}/${rel.slice(0, rel.lastIndexOf('/'))}`);
    await boot.writeFile(`${dir}/${rel}`, data);
  }
}

async function dtbsUnder(boot: FatVolume, dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await boot.list(dir)) {
    if (e.name === '.' || e.name === '..') continue;
    const path = `${dir}/${e.name}`;
    if (e.isDir) out.push(...(await dtbsUnder(boot, path)));
    else if (/\.dtb$/i.test(e.name)) out.push(path);
  }
  return out;
}
