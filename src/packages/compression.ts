/**
 * Which compression a file name says it has. Apart from the decoders (src/packages/decompress.ts),
 * so that knowing a raw image is raw does not load them.
 */
export type Compression = 'xz' | 'zst' | 'gz' | 'none';

export function compressionOf(name: string): Compression {
  if (name.endsWith('.xz')) return 'xz';
  if (name.endsWith('.zst')) return 'zst';
  if (name.endsWith('.gz')) return 'gz';
  return 'none';
}
