/**
 * Decoders for the compressions found in Debian archives (.deb members, Packages indices).
 * Node's zlib has gzip but neither xz nor zstd, hence two dependencies:
 *  - xz: `xz-decompress` (liblzma's decoder compiled to WebAssembly). Measured on the trixie
 *    linux-image-amd64 data.tar.xz (108 MB -> 112 MB) on this 2-core builder: xz-decompress 3.9 s,
 *    @napi-rs/lzma 3.9 s, lzma-native 4.9 s (xz(1) itself: 3.3 s). It is as fast as the native
 *    bindings while streaming (the napi one only decodes whole buffers) and ships no per-platform
 *    binaries, so it runs on arm64 build hosts unchanged.
 *  - zstd: `fzstd`, a small pure-JS streaming decoder (no native code), for zstd-compressed .debs.
 */
import { createReadStream } from 'node:fs';
import { Readable, Transform } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { createGunzip, gunzipSync } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import xzModule from 'xz-decompress';
import type { Compression } from './compression.js';

export { compressionOf, type Compression } from './compression.js';

const { XzReadableStream } = xzModule as unknown as typeof import('xz-decompress');

function zstdTransform(): Transform {
  let push: (chunk: Uint8Array) => void = () => {};
  const decoder = new ZstdDecompress((data) => push(data));
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      push = (data) => this.push(Buffer.from(data));
      try {
        decoder.push(chunk);
        done();
      } catch (err) {
        done(err as Error);
      }
    },
    flush(done) {
      push = (data) => this.push(Buffer.from(data));
      try {
        decoder.push(new Uint8Array(0), true);
        done();
      } catch (err) {
        done(err as Error);
      }
    },
  });
}

/** A decompressed stream of `input`. */
export function decompressStream(input: Readable, compression: Compression): Readable {
  switch (compression) {
    case 'none':
      return input;
    case 'gz':
      return input.pipe(createGunzip());
    case 'zst':
      return input.pipe(zstdTransform());
    case 'xz': {
      const web = Readable.toWeb(input) as unknown as ReadableStream<Uint8Array>;
      return Readable.fromWeb(new XzReadableStream(web) as unknown as WebReadableStream<Uint8Array>);
    }
  }
}

/** A decompressed stream of bytes [start, end) of a file. */
export function decompressFileRange(path: string, start: number, end: number, compression: Compression): Readable {
  return decompressStream(createReadStream(path, { start, end: end - 1 }), compression);
}

export async function decompressBuffer(data: Uint8Array, compression: Compression): Promise<Buffer> {
  if (compression === 'none') return Buffer.from(data);
  if (compression === 'gz') return gunzipSync(data);
  const chunks: Buffer[] = [];
  for await (const c of decompressStream(Readable.from([Buffer.from(data)]), compression)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
