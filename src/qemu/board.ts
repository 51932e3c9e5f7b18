/** A board's `emulation.qemu` section (boards/<id>.yml) as QEMU settings. */
import type { Board } from '../spec/board.js';
import type { EmulationSettings } from './args.js';

/** Undefined when the board cannot be emulated (no emulation section). */
export function emulationFromBoard(board: Board): EmulationSettings | undefined {
  const q = board.emulation?.qemu;
  if (!q) return undefined;
  return {
    arch: q.arch,
    machine: q.machine,
    cpu: q.cpu,
    memoryMiB: q.memory,
    firmware: q.firmware,
    drive: q.disk,
    nic: q.net,
  };
}
