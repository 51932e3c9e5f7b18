import { createHash } from 'node:crypto';

/**
 * Stable identifiers for a build (disk GUID, partition GUIDs, FAT volume ids, verity salts):
 * derived from what the image is, never random, so two builds of the same inputs are identical.
 */
export function stableBytes(...parts: string[]): Buffer {
  return createHash('sha256').update(parts.join('\0')).digest();
}

/** An RFC 4122 version-4-shaped GUID derived from `parts`. */
export function stableGuid(...parts: string[]): string {
  const b = stableBytes('guid', ...parts);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.subarray(0, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`.toUpperCase();
}

export function stableUint32(...parts: string[]): number {
  return stableBytes('u32', ...parts).readUInt32LE(0);
}
