/** The ar(5) container of a .deb: a magic line, then members with 60-byte headers, 2-byte aligned. */
import { open } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';

export interface ArMember {
  name: string;
  offset: number; // of the member's data in the file
  size: number;
}

export async function readArMembers(path: string): Promise<ArMember[]> {
  const fh = await open(path, 'r');
  try {
    const { size: fileSize } = await fh.stat();
    const magic = Buffer.alloc(8);
    await fh.read(magic, 0, 8, 0);
    if (magic.toString('latin1') !== '!<arch>\n') throw new EdgekitError(`${path}: not a .deb (no ar header)`);
    const members: ArMember[] = [];
    let pos = 8;
    const header = Buffer.alloc(60);
    while (pos + 60 <= fileSize) {
      await fh.read(header, 0, 60, pos);
      if (header.toString('latin1', 58, 60) !== '`\n') throw new EdgekitError(`${path}: corrupt ar member at byte ${pos}`);
      const name = header.toString('latin1', 0, 16).trim().replace(/\/$/, '');
      const size = Number(header.toString('latin1', 48, 58).trim());
      if (!Number.isFinite(size) || pos + 60 + size > fileSize) {
        throw new EdgekitError(`${path}: truncated ar member ${name}`);
      }
      members.push({ name, offset: pos + 60, size });
      pos += 60 + size + (size % 2);
    }
    return members;
  } finally {
    await fh.close();
  }
}
