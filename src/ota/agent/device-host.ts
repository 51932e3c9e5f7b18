/**
 * The agent's host on a real device: the disk's partitions from /etc/edgekit/partitions (written
 * by the builder: `disk /dev/vda`, `part system-a 2` ...), the boot partition edited in place
 * through O3's FAT editor, and the bootchooser the image's update configuration names.
 */
import { readFile } from 'node:fs/promises';
import { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { openBlockDevice, type OpenBlockDevice } from '../slots/block-device.js';
import type { Slot } from '../slots/bootchooser.js';
import { openBootchooser } from '../slots/choosers.js';
import type { AgentHost } from './agent.js';
import type { AgentConfig } from './config.js';
import { checkHealth, systemProbes } from './health.js';

export interface PartitionMap {
  /** Device path prefix of the disk's partitions (/dev/vda, /dev/mmcblk0p). */
  disk: string;
  parts: Record<string, number>;
}

export function parsePartitions(text: string, where = '/etc/edgekit/partitions'): PartitionMap {
  let disk: string | undefined;
  const parts: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const w = line.trim().split(/\s+/);
    if (w[0] === 'disk') disk = w[1];
    if (w[0] === 'part' && w.length === 3) parts[w[1]] = Number(w[2]);
  }
  if (!disk) throw new EdgekitError(`${where}: no "disk" line`);
  return { disk, parts };
}

export function partitionPath(map: PartitionMap, role: string): string {
  const n = map.parts[role];
  if (!n) throw new EdgekitError(`this image has no ${role} partition: the update agent needs an A/B layout with the root on disk`);
  return `${map.disk}${n}`;
}

export interface DeviceHost extends AgentHost {
  close(): Promise<void>;
}

export interface DeviceHostOptions {
  /** The partition map; default the image's /etc/edgekit/partitions. */
  partitionsFile?: string;
  /** The running kernel's command line (it names the slot); default /proc/cmdline. */
  cmdline?: string;
}

export async function openDeviceHost(config: AgentConfig, o: DeviceHostOptions = {}): Promise<DeviceHost> {
  const partitionsFile = o.partitionsFile ?? '/etc/edgekit/partitions';
  const map = parsePartitions(await readFile(partitionsFile, 'utf8').catch(() => {
    throw new EdgekitError(`${partitionsFile}: cannot read (not an edgekit image?)`);
  }), partitionsFile);
  const paths: Record<Slot, string> = { a: partitionPath(map, 'system-a'), b: partitionPath(map, 'system-b') };
  const opened: OpenBlockDevice[] = [];
  const openDev = async (p: string) => {
    const d = await openBlockDevice(p);
    opened.push(d);
    return d;
  };
  const closeAll = async () => {
    for (const d of opened) await d.close();
  };
  try {
    const bootDev = await openDev(partitionPath(map, 'boot'));
    const slots: Record<Slot, OpenBlockDevice> = { a: await openDev(paths.a), b: await openDev(paths.b) };
    const boot = await FatVolume.open(bootDev);
    return {
      chooser: await openBootchooser(config.bootchooser, boot, { tries: config.tries, ...(o.cmdline !== undefined ? { cmdline: async () => o.cmdline! } : {}) }),
      boot,
      slotDevice: (s) => slots[s],
      slotPath: (s) => paths[s],
      health: () => checkHealth(config, systemProbes),
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
