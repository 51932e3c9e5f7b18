/** Boots an image under QEMU with its serial console on a pty, as a bench device's USB serial adapter would be. */
import { emulationFromBoard } from '../../src/qemu/board.js';
import { startQemu, type QemuSession } from '../../src/qemu/run.js';
import { loadBoard } from '../../src/spec/board.js';

/**
 * Starts QEMU (snapshot: the image is not changed) and returns once the pty is known. Whoever reads
 * the console must open `ptyPath` at once: QEMU drops console output while no one has it open.
 */
export async function bootOnPty(image: string, board: string): Promise<QemuSession & { ptyPath: string }> {
  const emu = emulationFromBoard(loadBoard(board).value)!;
  const session = await startQemu({ ...emu, firmware: emu.firmware ?? 'uefi', image, snapshot: true, serial: 'pty', net: { user: true, hostForwards: [] } });
  if (!session.ptyPath) {
    await session.stop();
    throw new Error('QEMU started without a pty');
  }
  return session as QemuSession & { ptyPath: string };
}
