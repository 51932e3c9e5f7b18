/** Where the simulator finds the boot partition and the two slots on its disk image. */
import type { ImageManifest } from '../../image/manifest.js';
import { EdgekitError } from '../../util/errors.js';
import type { Slot } from '../slots/bootchooser.js';

export interface SimRegion {
  start: number;
  size: number;
}

export interface SimLayout {
  boot: SimRegion;
  slots: Record<Slot, SimRegion>;
}

export function simLayoutFromManifest(m: ImageManifest): SimLayout {
  const part = (role: string): SimRegion => {
    const p = m.partitions.find((x) => x.role === role);
    if (!p) throw new EdgekitError(`image ${m.name} ${m.version} (${m.board}) has no ${role} partition: the simulator needs an A/B layout with a root on disk`);
    return { start: p.start, size: p.size };
  };
  return { boot: part('boot'), slots: { a: part('system-a'), b: part('system-b') } };
}
