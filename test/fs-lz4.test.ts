import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { lz4Bound, lz4Compress, lz4Decompress, Lz4FormatError } from '../src/fs/squashfs/lz4.js';

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
});
