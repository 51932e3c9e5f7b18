import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

/** sha256 of a file (or a range of it), read in 4 MiB pieces. */
export async function sha256OfFile(path: string, start = 0, length = Infinity): Promise<string> {
  const fh = await open(path, 'r');
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(4 << 20);
  try {
    let pos = start;
    const end = start + length;
    while (pos < end) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, end - pos), pos);
      if (!bytesRead) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}
