import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, openSync, writeSync, closeSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { appendVerityHashTree, verifyVerity, verityTable } from '../src/fs/verity.js';

function veritysetup(args: string[]): { status: number | null; out: string } {
  const r = spawnSync('veritysetup', args, { env: { ...process.env, LC_ALL: 'C' } });
  return { status: r.status, out: r.stdout.toString() + r.stderr.toString() };
}

function flipByte(path: string, at: number): void {
  const b = readFileSync(path).subarray(at, at + 1);
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.from([b[0] ^ 0x01]), 0, 1, at);
  closeSync(fd);
}

describe('dm-verity hash tree', () => {
  let work: string;
  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), 'edgekit-verity-'));
  });
  afterAll(() => rmSync(work, { recursive: true, force: true }));

  // 1 block (no tree), one hash block, two levels, three levels.
  for (const blocks of [1, 2, 129, 16_385]) {
    it(`matches veritysetup format byte for byte for ${blocks} data blocks`, async () => {
      const data = randomBytes(blocks * 4096);
      const salt = randomBytes(32);
      const mine = join(work, `mine-${blocks}`);
      const theirsData = join(work, `data-${blocks}`);
      const theirsHash = join(work, `hash-${blocks}`);
      writeFileSync(mine, data);
      writeFileSync(theirsData, data);
      writeFileSync(theirsHash, Buffer.alloc(0));
      const r = await appendVerityHashTree(mine, { dataSize: data.length, salt });
      const v = veritysetup(['format', '--no-superblock', '--salt', salt.toString('hex'), theirsData, theirsHash]);
      expect(v.status, v.out).toBe(0);
      expect(r.rootHash).toBe(/Root hash:\s+([0-9a-f]+)/.exec(v.out)?.[1]);
      expect(r.dataBlocks).toBe(blocks);
      expect(r.hashOffset).toBe(data.length);
      const written = readFileSync(mine);
      expect(written.length).toBe(r.totalSize);
      expect(written.subarray(0, data.length).equals(data)).toBe(true);
      expect(written.subarray(r.hashOffset).equals(readFileSync(theirsHash))).toBe(true);
    });
  }

  it('pads data that does not end on a block boundary, as veritysetup sees the padded data', async () => {
    const data = randomBytes(3 * 4096 + 100);
    const salt = randomBytes(16);
    const mine = join(work, 'odd');
    writeFileSync(mine, Buffer.concat([data, Buffer.from('junk after the data')]));
    const r = await appendVerityHashTree(mine, { dataSize: data.length, salt });
    expect(r.hashOffset).toBe(4 * 4096);
    const padded = join(work, 'odd-padded');
    writeFileSync(padded, Buffer.concat([data, Buffer.alloc(4096 - 100)]));
    writeFileSync(join(work, 'odd-hash'), Buffer.alloc(0));
    const v = veritysetup(['format', '--no-superblock', '--salt', salt.toString('hex'), padded, join(work, 'odd-hash')]);
    expect(r.rootHash).toBe(/Root hash:\s+([0-9a-f]+)/.exec(v.out)?.[1]);
    expect(readFileSync(mine).subarray(0, r.hashOffset).equals(readFileSync(padded))).toBe(true);
  });

  it('veritysetup verify and verifyVerity accept the file, and reject it after one flipped byte', async () => {
    const blocks = 700;
    const salt = randomBytes(32);
    const file = join(work, 'payload');
    writeFileSync(file, randomBytes(blocks * 4096));
    const r = await appendVerityHashTree(file, { dataSize: blocks * 4096, salt });
    const args = (root: string) => [
      'verify', '--no-superblock', '--salt', r.salt, '--data-blocks', String(r.dataBlocks),
      '--hash-offset', String(r.hashOffset), file, file, root,
    ];
    const ok = veritysetup(args(r.rootHash));
    expect(ok.status, ok.out).toBe(0);
    expect(await verifyVerity(file, r)).toEqual({ ok: true });

    flipByte(file, 123 * 4096 + 77);
    expect(veritysetup(args(r.rootHash)).status).not.toBe(0);
    const bad = await verifyVerity(file, r);
    expect(bad.ok).toBe(false);
    expect(bad.ok === false && bad.dataBlock).toBe(123);

    flipByte(file, 123 * 4096 + 77); // restore the data, then damage the tree instead
    expect(veritysetup(args(r.rootHash)).status).toBe(0);
    flipByte(file, r.hashOffset + 4096 + 5);
    expect(veritysetup(args(r.rootHash)).status).not.toBe(0);
    expect((await verifyVerity(file, r)).ok).toBe(false);
  });

  it('verifyVerity finds a payload at an offset inside a larger file', async () => {
    const payload = join(work, 'inner');
    writeFileSync(payload, randomBytes(50 * 4096));
    const r = await appendVerityHashTree(payload, { dataSize: 50 * 4096, salt: Buffer.from('00ff', 'hex') });
    const disk = join(work, 'disk');
    writeFileSync(disk, Buffer.concat([randomBytes(1 << 20), readFileSync(payload), randomBytes(8192)]));
    expect(await verifyVerity(disk, { ...r, offset: 1 << 20 })).toEqual({ ok: true });
    expect((await verifyVerity(disk, { ...r, offset: 0 })).ok).toBe(false);
  });

  it('builds the dmsetup table line', async () => {
    const file = join(work, 'table');
    writeFileSync(file, randomBytes(10 * 4096));
    const r = await appendVerityHashTree(file, { dataSize: 10 * 4096, salt: Buffer.from('abcd', 'hex') });
    expect(statSync(file).size).toBe(r.totalSize);
    expect(verityTable({ ...r, dataDevice: '/dev/vda2' })).toBe(
      `0 80 verity 1 /dev/vda2 /dev/vda2 4096 4096 10 10 sha256 ${r.rootHash} abcd`,
    );
  });
});
