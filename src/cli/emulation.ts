import { open } from 'node:fs/promises';
import { readEmbeddedManifest } from '../image/manifest.js';
import { emulationFromBoard } from '../qemu/board.js';
import type { EmulationSettings } from '../qemu/args.js';
import { loadBoard } from '../spec/board.js';

/** An edgekit image names its board in its manifest; the board says how to emulate it. */
export async function resolveEmulationFromImage(imagePath: string): Promise<EmulationSettings | undefined> {
  const fh = await open(imagePath, 'r');
  try {
    const doc = await readEmbeddedManifest(fh, imagePath).catch(() => undefined);
    if (!doc) return undefined;
    // A vendor's board that edgekit does not ship: the user names its file with --board.
    const board = (() => {
      try {
        return loadBoard(doc.signed.board).value;
      } catch {
        return undefined;
      }
    })();
    return board && emulationFromBoard(board);
  } finally {
    await fh.close();
  }
}
