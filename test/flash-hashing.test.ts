/**
 * The flasher's hashing off the main thread and the checks built on it, on the compiled code
 * (the hashing worker is a .js file of its own: run `npm run build` first):
 *  - HashPool chains give node:crypto's sha256, on workers (shared memory, copied bytes, zeros,
 *    several chains interleaved) and on the main thread while no worker is up yet;
 *  - RegionCheck and RangeCheck pass matching data and name the region or range that does not match;
 *  - readBack reads a real file with O_DIRECT and names the range whose bytes differ, or where the
 *    target ends early.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, openSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { alignedBuffers } from '../dist/flash/aligned.js';
import { RangeCheck, RegionCheck } from '../dist/flash/hash-check.js';
import { HashPool } from '../dist/flash/hash-pool.js';
import { readBack } from '../dist/flash/readback.js';
import { testDir } from './helpers/built-images.js';

const MiB = 1 << 20;
const sha256 = (...parts: Buffer[]) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
};

let pool: HashPool;
let work: string;
beforeAll(async () => {
  work = join(testDir(), 'flash-hashing');
  mkdirSync(work, { recursive: true });
  pool = new HashPool(2);
});
afterAll(async () => {
  await pool.close();
});

describe('HashPool', () => {
  it('hashes shared memory, copied bytes and zeros on workers, several chains interleaved', async () => {
    await pool.ready();
    const [a, b] = alignedBuffers(2, 4 * MiB, { shared: true });
    randomBytes(4 * MiB).copy(a);
    randomBytes(4 * MiB).copy(b);
    const plain = randomBytes(100_000);
    const zeros = Buffer.alloc(3 * MiB + 5);
    const one = pool.chain(8 * MiB);
    const two = pool.chain(5 * MiB);
    const three = pool.chain(MiB);
    const updates = [
      one.update(a.subarray(0, MiB)),
      two.update(b),
      one.zeros(zeros.length),
      three.update(plain),
      one.update(a.subarray(MiB)),
      two.update(plain),
      three.update(a.subarray(17, 4099)),
    ];
    await Promise.all(updates);
    expect(await one.digest()).toBe(sha256(a.subarray(0, MiB), zeros, a.subarray(MiB)));
    expect(await two.digest()).toBe(sha256(b, plain));
    expect(await three.digest()).toBe(sha256(plain, a.subarray(17, 4099)));
    expect(await pool.chain(0).digest()).toBe(sha256());
  });

  it('gives a large chain to another worker, started for it, while the first has one open', async () => {
    await pool.ready();
    const [a, b] = alignedBuffers(2, 8 * MiB, { shared: true });
    randomBytes(8 * MiB).copy(a);
    randomBytes(8 * MiB).copy(b);
    const first = pool.chain(1 << 30);
    const busy = [first.update(a), first.update(a), first.update(a)];
    // The first worker has a large chain open: this one goes to a second worker, queued until it is up.
    expect(pool.size).toBe(1);
    const second = pool.chain(1 << 30);
    expect(pool.size).toBe(2);
    // A small chain does not start a third (the pool may have two).
    expect(await pool.chain(4096).digest()).toBe(sha256(Buffer.alloc(0)));
    expect(pool.size).toBe(2);
    const other = [second.update(b), second.zeros(4096)];
    await Promise.all([...busy, ...other]);
    expect(await second.digest()).toBe(sha256(b, Buffer.alloc(4096)));
    expect(await first.digest()).toBe(sha256(a, a, a));
  });

  it('hashes on the main thread while no worker is up, with the same result', async () => {
    const fresh = new HashPool(1);
    try {
      // Made before the event loop turns: its worker cannot be up yet, and it is small.
      const early = fresh.chain(2 * MiB);
      const data = randomBytes(2 * MiB);
      await early.update(data);
      await early.zeros(4096);
      expect(await early.digest()).toBe(sha256(data, Buffer.alloc(4096)));
    } finally {
      await fresh.close();
    }
  });

  it('fails the hashes of a closed pool instead of leaving them pending', async () => {
    const closing = new HashPool(1);
    await closing.ready();
    const chain = closing.chain(1000);
    await closing.close();
    await expect(chain.update(randomBytes(1000))).rejects.toThrow(/hashing/);
  });
});

describe('checks while streaming', () => {
  const region = (data: Buffer, size: number) => sha256(data, Buffer.alloc(size - data.length));

  it('RegionCheck counts unwritten bytes of a region as zeros and passes a matching image', async () => {
    const [buf] = alignedBuffers(1, MiB, { shared: true });
    randomBytes(MiB).copy(buf);
    const check = new RegionCheck(
      [
        { name: 'boot', offset: 4096, size: 2 * MiB, sha256: region(buf.subarray(0, 8192), 2 * MiB) },
        { name: 'table', offset: 0, size: 4096, sha256: sha256(Buffer.alloc(4096)) },
      ],
      'test.img',
      pool,
    );
    const pending: Array<Promise<void>> = [];
    check.consume(4096, buf.subarray(0, 8192), pending);
    await Promise.all(pending);
    await expect(check.finish(8 * MiB)).resolves.toBeUndefined();
  });

  it('RegionCheck names the signed region whose bytes were altered', async () => {
    const data = randomBytes(64 * 1024);
    const check = new RegionCheck([{ name: 'system-a', offset: MiB, size: data.length, sha256: sha256(data) }], 'test.img', pool);
    const altered = Buffer.from(data);
    altered[1000] ^= 1;
    check.consume(MiB, altered, []);
    await expect(check.finish(4 * MiB)).rejects.toThrow(
      `test.img: signed region system-a (bytes ${MiB}-${MiB + data.length - 1}) does not match the signed manifest: the image was altered after signing`,
    );
  });

  it('RangeCheck passes matching ranges and names the block-map range that does not match', async () => {
    const data = randomBytes(5 * 4096);
    const good = new RangeCheck(
      [
        { start: 0, end: 4096, sha256: sha256(data.subarray(0, 4096)) },
        { start: 8192, end: 5 * 4096, sha256: sha256(data.subarray(8192)) },
      ],
      'test.img',
      pool,
    );
    // Fed in two pieces that split the second range.
    good.consume(0, data.subarray(0, 12288), []);
    good.consume(12288, data.subarray(12288), []);
    good.finish(data.length);
    await expect(good.settled()).resolves.toBeUndefined();

    const bad = new RangeCheck([{ start: 8192, end: 5 * 4096, sha256: sha256(Buffer.alloc(3 * 4096)) }], 'test.img', pool);
    bad.consume(0, data, []);
    await expect(bad.settled()).rejects.toThrow(
      'test.img: data does not match the block map in blocks 2-4 (bytes 8192-20479): the image is corrupt or the .bmap is another image\'s',
    );
    expect(bad.failure?.message).toMatch(/blocks 2-4/);
  });

  it('RangeCheck says when the source ends before the last range', () => {
    const check = new RangeCheck([{ start: 0, end: 8192, sha256: sha256(Buffer.alloc(8192)) }], 'short.img', pool);
    check.consume(0, Buffer.alloc(4096), []);
    expect(() => check.finish(4096)).toThrow('short.img: the image ends at byte 4096, but its block map has data up to byte 8192: the image is truncated');
  });
});

describe('readBack', () => {
  const size = 20 * MiB;
  const data = randomBytes(size);
  const ranges = [
    { start: 0, end: 4096, sha256: sha256(data.subarray(0, 4096)) },
    { start: MiB, end: 12 * MiB, sha256: sha256(data.subarray(MiB, 12 * MiB)) },
    { start: 12 * MiB, end: size, sha256: sha256(data.subarray(12 * MiB)) },
  ];

  it('reads every range back bypassing the page cache and passes a good copy', async () => {
    const target = join(work, 'good.img');
    writeFileSync(target, data);
    let last = 0;
    const r = await readBack(target, ranges, { hashes: pool, onBytes: (n) => (last = n) });
    expect(r).toEqual({ ok: true, direct: true, bytes: 4096 + 11 * MiB + 8 * MiB });
    expect(last).toBe(r.bytes);
  });

  it('names the range where the target holds other bytes', async () => {
    const target = join(work, 'flipped.img');
    writeFileSync(target, data);
    const fd = openSync(target, 'r+');
    writeSync(fd, Buffer.from([data[15 * MiB + 3] ^ 0x40]), 0, 1, 15 * MiB + 3);
    closeSync(fd);
    const r = await readBack(target, ranges, { hashes: pool });
    expect(r.ok).toBe(false);
    expect(r.error).toBe(
      `${target}: read-back mismatch in bytes ${12 * MiB}-${size - 1} (blocks 3072-5119): the target does not hold what was written`,
    );
  });

  it('says where a target that is too short ends', async () => {
    const target = join(work, 'short.img');
    writeFileSync(target, data.subarray(0, 16 * MiB));
    const r = await readBack(target, ranges, { hashes: pool });
    expect(r.ok).toBe(false);
    expect(r.error).toBe(`${target}: read-back ended at byte ${16 * MiB}: the target is shorter than the image`);
  });
});
