import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { LZ4_ENCODER, lz4Bound, lz4Compress, lz4Decompress, lz4DecompressJs, lz4Encoder, lz4EncoderJs, Lz4FormatError } from '../src/fs/squashfs/lz4.js';
import { LZ4_WASM } from '../src/fs/squashfs/lz4-wasm.js';
// @ts-expect-error: a plain .mjs script, no types
import { assemble } from '../scripts/build-lz4-wasm.mjs';

/** Deterministic pseudo-random bytes (an LCG), so the fixed input below is the same on every run. */
function lcg(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function roundTrip(src: Buffer): Buffer {
  const packed = Buffer.alloc(lz4Bound(src.length));
  const n = lz4Compress(src, packed);
  const back = Buffer.alloc(src.length);
  expect(lz4Decompress(packed.subarray(0, n), back)).toBe(src.length);
  expect(back.equals(src)).toBe(true);
  return packed.subarray(0, n);
}

describe('lz4 block codec', () => {
  it('round-trips short, empty, random, repetitive and mixed blocks up to 1 MiB', () => {
    const text = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(3000));
    const mixed = Buffer.concat([randomBytes(5000), text.subarray(0, 70_000), randomBytes(300), Buffer.alloc(60_000, 7)]);
    for (const src of [Buffer.alloc(0), Buffer.from('a'), Buffer.from('abcabcabcabcab'), randomBytes(131072), text, mixed, Buffer.alloc(1 << 20)]) roundTrip(src);
    expect(roundTrip(text).length).toBeLessThan(text.length / 20);
    expect(roundTrip(Buffer.alloc(1 << 20)).length).toBeLessThan(5000);
  });

  it('gives the same bytes for the same input, whatever was compressed before', () => {
    const a = Buffer.concat([randomBytes(40_000), Buffer.alloc(40_000, 'x')]);
    const first = Buffer.from(roundTrip(a));
    roundTrip(randomBytes(90_000));
    roundTrip(Buffer.from('other data '.repeat(9000)));
    expect(roundTrip(a).equals(first)).toBe(true);
  });

  it('refuses corrupt blocks instead of reading or writing out of bounds', () => {
    const src = Buffer.from('hello hello hello hello hello hello hello!'.repeat(50));
    const packed = Buffer.from(roundTrip(src));
    const out = Buffer.alloc(src.length);
    expect(() => lz4Decompress(packed.subarray(0, packed.length - 3), out)).toThrow(Lz4FormatError);
    expect(() => lz4Decompress(packed, Buffer.alloc(src.length - 1))).toThrow(Lz4FormatError);
    const badOffset = Buffer.from([0x14, 0x61, 0xff, 0xff, 0x00]); // 1 literal, then a match 65535 back
    expect(() => lz4Decompress(badOffset, Buffer.alloc(100))).toThrow(/offset/);
  });

  it('still writes edgekit-lz4/1: the bytes the first release of the encoder wrote for a fixed input', () => {
    // The sha256 of what edgekit-lz4/1 (the JavaScript encoder as first released) made of this
    // input in 128 KiB blocks. A different hash means images and deltas change: a new LZ4_ENCODER.
    const text = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(3000));
    const input = Buffer.concat([lcg(70000, 1), text, Buffer.alloc(50000, 9), lcg(3000, 2), text.subarray(5, 40000), Buffer.from('abababababababababcabcabcabc'.repeat(2000))]);
    expect(LZ4_ENCODER).toBe('edgekit-lz4/1');
    for (const encode of [lz4Compress, lz4EncoderJs()]) {
      const hash = createHash('sha256');
      const dst = Buffer.alloc(lz4Bound(1 << 17));
      for (let at = 0; at < input.length; at += 1 << 17) hash.update(dst.subarray(0, encode(input.subarray(at, at + (1 << 17)), dst)));
      expect(hash.digest('hex')).toBe('234b5be0685285327a1507a9d5d1dfd041489a2001ab84a719ab960afcf1c456');
    }
  });

  it('falls back to the JavaScript codec where node has no WebAssembly (--jitless), with the same bytes', () => {
    // The built module (npm run build), in a node without WebAssembly: same fixed input, same hash.
    const script = `
      import { createHash } from 'node:crypto';
      const { lz4Bound, lz4Compress, lz4Decompress } = await import(${JSON.stringify(new URL('../dist/fs/squashfs/lz4.js', import.meta.url).href)});
      const src = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(3000));
      const dst = Buffer.alloc(lz4Bound(src.length));
      const n = lz4Compress(src, dst);
      const back = Buffer.alloc(src.length);
      if (lz4Decompress(dst.subarray(0, n), back) !== src.length || !back.equals(src)) throw new Error('round trip');
      console.log(typeof WebAssembly, createHash('sha256').update(dst.subarray(0, n)).digest('hex'));`;
    const r = spawnSync(process.execPath, ['--jitless', '--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0); // V8 warns on stderr that --jitless disables WebAssembly
    const text = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(3000));
    const dst = Buffer.alloc(lz4Bound(text.length));
    const n = lz4Compress(text, dst);
    expect(r.stdout.trim()).toBe(`undefined ${createHash('sha256').update(dst.subarray(0, n)).digest('hex')}`);
  });

  it('the WebAssembly encoder gives the JavaScript reference encoder\'s bytes, block after block', () => {
    // Real machine code (node's own executable), text, runs, random data and block sizes from
    // 0 to 1 MiB, through one encoder of each kind so stale hash-table entries are exercised too.
    const exe = readFileSync(process.execPath).subarray(0, 6 << 20);
    const blocks: Buffer[] = [];
    for (let at = 0; at + (1 << 17) <= exe.length; at += 1 << 17) blocks.push(exe.subarray(at, at + (1 << 17)));
    blocks.push(exe.subarray(0, 1 << 20), Buffer.alloc(0), Buffer.from('abc'), Buffer.alloc(13, 1), lcg(12, 3), lcg(4097, 4));
    blocks.push(Buffer.concat([Buffer.alloc(1000, 7), lcg(70_000, 5), Buffer.alloc(70_000, 8)]), Buffer.from('xyxyxyz'.repeat(20_000)));
    const wasm = lz4Encoder();
    const js = lz4EncoderJs();
    const a = Buffer.alloc(lz4Bound(1 << 20));
    const b = Buffer.alloc(lz4Bound(1 << 20));
    const back = Buffer.alloc(1 << 20);
    for (const src of [...blocks, ...blocks.slice(0, 5)]) {
      const n = wasm(src, a);
      expect(js(src, b)).toBe(n);
      expect(a.subarray(0, n).equals(b.subarray(0, n))).toBe(true);
      expect(lz4Decompress(a.subarray(0, n), back.subarray(0, src.length))).toBe(src.length);
      expect(back.subarray(0, src.length).equals(src)).toBe(true);
    }
  });

  it('ships the WebAssembly module that lz4.wat assembles to', async () => {
    const ts: string = await assemble();
    const b64 = [...ts.matchAll(/'([A-Za-z0-9+/=]+)'/g)].map((m) => m[1]).join('');
    expect(b64).toBe(LZ4_WASM);
  });

  it('decodes overlapping matches (offsets 1 to 7) and blocks that end right at the buffer end', () => {
    for (let period = 1; period <= 7; period++) {
      const unit = lcg(period, period);
      for (const total of [19, 20, 21, 22, 23, 64, 1000]) {
        const src = Buffer.concat([Buffer.from('head'), Buffer.alloc(total).map((_, i) => unit[i % period]), Buffer.from('tail!')]);
        roundTrip(src);
      }
    }
  });

  it('the WebAssembly and JavaScript decoders agree on every block, corrupt ones included', () => {
    // Valid blocks, then each of them damaged at random (bytes changed, cut short, or decoded into
    // too small a buffer): both decoders must give the same bytes, or both throw.
    const exe = readFileSync(process.execPath);
    const text = Buffer.from('hello hello hello hello hello hello hello!'.repeat(500));
    const sources = [exe.subarray(1 << 20, (1 << 20) + (1 << 17)), text, lcg(5000, 9), Buffer.alloc(70_000, 3), Buffer.from('ab'.repeat(300))];
    const packed = sources.map((src) => Buffer.from(roundTrip(src)));
    let seed = 12345;
    const rand = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const outcome = (decode: typeof lz4Decompress, src: Buffer, cap: number) => {
      const out = Buffer.alloc(cap);
      try {
        const n = decode(src, out);
        return `ok ${n} ${createHash('sha256').update(out.subarray(0, n)).digest('hex')}`;
      } catch (err) {
        expect(err).toBeInstanceOf(Lz4FormatError);
        return 'error';
      }
    };
    let errors = 0;
    for (let i = 0; i < 600; i++) {
      const k = i % packed.length;
      const block = Buffer.from(packed[k]);
      let cap = sources[k].length;
      const damage = i < packed.length ? -1 : rand(3);
      if (damage === 0) for (let j = 0, m = 1 + rand(4); j < m; j++) block[rand(block.length)] = rand(256);
      const src = damage === 1 ? block.subarray(0, rand(block.length)) : block;
      if (damage === 2) cap = rand(cap);
      const wasm = outcome(lz4Decompress, src, cap);
      expect(outcome(lz4DecompressJs, src, cap)).toBe(wasm);
      if (wasm === 'error') errors++;
    }
    expect(errors).toBeGreaterThan(100);
  });
});
