/**
 * What every simulated firmware does once it has picked a slot and loaded its kernel, initramfs
 * and command line: the kernel starts only if it is one the test declared working (anything else,
 * torn or stale, crashes like a bad image would), and the slot's root must pass dm-verity against
 * the command line's `edgekit.verity=` (standing in for the kernel's verified boot).
 */
import { createHash } from 'node:crypto';
import { partitionDevice } from '../slots/block-device.js';
import { verifyVerityOnDevice } from '../slots/verity-check.js';
import type { Slot } from '../slots/bootchooser.js';
import type { SimDisk } from './sim-disk.js';
import type { SimLayout } from './layout.js';

export type BootAttempt =
  | { booted: true; slot: Slot; entry: string; cmdline: string }
  | { booted: false; entry?: string; reason: string; /** The firmware stopped for good (a prompt waiting for input): no reset follows. */ stuck?: boolean };

export interface FirmwareOptions {
  /** sha256 of kernels that start; any other kernel (torn, stale) crashes like a bad image would. */
  workingKernels: Set<string>;
}

export interface LoadedSlot {
  /** What the firmware booted from, for logs and tests (an entry file, a config file, a script line). */
  entry: string;
  kernelName: string;
  /** undefined: the kernel file was not there. */
  kernel: Buffer | undefined;
  /** Set when an initramfs was asked for and is not there. */
  initrdMissing?: string;
  cmdline: string;
}

export async function startSlotKernel(disk: SimDisk, layout: SimLayout, s: LoadedSlot, opts: FirmwareOptions): Promise<BootAttempt> {
  const fail = (reason: string): BootAttempt => ({ booted: false, entry: s.entry, reason });
  if (!s.kernel) return fail(`kernel ${s.kernelName} is missing`);
  const sha = createHash('sha256').update(s.kernel).digest('hex');
  if (!opts.workingKernels.has(sha)) return fail(`kernel ${s.kernelName} crashed (unknown image ${sha.slice(0, 12)})`);
  if (s.initrdMissing) return fail(`initrd ${s.initrdMissing} is missing`);
  // U-Boot's A/B script writes the slot in capitals; the initramfs reads it either way.
  const slot = /(?:^|\s)edgekit\.slot=([abAB])(?:\s|$)/.exec(s.cmdline)?.[1]?.toLowerCase() as Slot | undefined;
  if (!slot) return fail('command line has no edgekit.slot=');
  const verity = /(?:^|\s)edgekit\.verity=([0-9a-f]+):([0-9a-f]*):(\d+):(\d+)(?:\s|$)/.exec(s.cmdline);
  if (!verity) return fail('command line has no edgekit.verity=');
  const region = layout.slots[slot];
  const check = await verifyVerityOnDevice(partitionDevice(disk, region.start, region.size), {
    rootHash: verity[1],
    salt: verity[2],
    dataBlocks: Number(verity[3]),
    hashOffset: Number(verity[4]) * 4096,
  });
  if (!check.ok) return fail(`dm-verity: ${check.problem}`);
  return { booted: true, slot, entry: s.entry, cmdline: s.cmdline };
}
