import { spawnSync } from 'node:child_process';
import { createReadStream, existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyDelta, makeDelta, type DeltaInfo } from '../src/ota/delta/index.js';
import { EdgekitError } from '../src/util/errors.js';
import { brotliCompressSync, brotliDecompressSync } from 'node:zlib';
import { flipByte, releaseTrees, sha256File, writePayload, type Payload } from './helpers/delta-trees.js';

let dir: string;
let v1: Payload, v2: Payload, delta: string, info: DeltaInfo;

function tool(cmd: string, args: string[]): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 1 << 26 });
  return { status: r.status, out: r.stdout.toString() + r.stderr.toString() };
}

/** The real tools' view of a payload: unsquashfs reads the filesystem, veritysetup checks the tree. */
function checkWithTools(path: string, p: Payload): void {
  const list = tool('unsquashfs', ['-lln', path]);
  expect(list.status, list.out).toBe(0);
  const v = p.verity;
  const ver = tool('veritysetup', ['verify', path, path, v.rootHash, '--no-superblock', `--hash-offset=${v.hashOffset}`, `--salt=${v.salt}`, `--data-blocks=${v.dataBlocks}`]);
  expect(ver.status, ver.out).toBe(0);
}

/** Copies a delta with its (brotli JSON) header changed by `edit`. */
function rewriteHeader(from: string, to: string, edit: (h: Record<string, any>) => Record<string, any>): void {
  const bytes = readFileSync(from);
  const len = bytes.readUInt32LE(8);
  const header = JSON.parse(brotliDecompressSync(bytes.subarray(12, 12 + len)).toString());
  const packed = brotliCompressSync(Buffer.from(JSON.stringify(edit(header))));
  const lenBuf = Buffer.alloc(4);
  lenBuf.writeUInt32LE(packed.length);
  writeFileSync(to, Buffer.concat([bytes.subarray(0, 8), lenBuf, packed, bytes.subarray(12 + len)]));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'edgekit-delta-test-'));
  const { v1: t1, v2: t2 } = releaseTrees();
  v1 = await writePayload(t1, join(dir, 'v1.img'), '11'.repeat(32));
  v2 = await writePayload(t2, join(dir, 'v2.img'), '22'.repeat(32));
  delta = join(dir, 'v1-v2.delta');
  info = await makeDelta(v1.path, v2.path, delta, { veritySalt: v2.verity.salt });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('makeDelta/applyDelta on synthetic releases', () => {
  it('rebuilds the target payload byte for byte, readable by unsquashfs and veritysetup', async () => {
    const out = join(dir, 'slot-b.img');
    await applyDelta({ delta, activePayload: v1.path, out, expectedSha256: v2.sha256, expectedSize: v2.size });
    expect(readFileSync(out).equals(readFileSync(v2.path))).toBe(true);
    checkWithTools(out, v2);
  });

  it('sends the changed binary as a small diff and unchanged files as copies', () => {
    expect(info.changedFiles).toBeGreaterThanOrEqual(1); // libfoo (app.conf is too small to diff)
    expect(info.verityRecomputed).toBe(true);
    expect(info.copiedBytes).toBeGreaterThan(0);
    // libfoo alone is ~900 kB of near-random words; a rebuild with 300 new bytes must not cost that.
    expect(info.bytes).toBeLessThan(v2.size / 10);
  });

  it('accepts the delta as a stream and writes into a slot inside a larger disk file', async () => {
    const disk = join(dir, 'disk.img');
    writeFileSync(disk, Buffer.alloc(0));
    truncateSync(disk, 1 << 20);
    copyFileSync(v1.path, join(dir, 'v1-copy.img'));
    const big = join(dir, 'disk2.img');
    truncateSync(disk, 0);
    writeFileSync(big, Buffer.concat([Buffer.alloc(65536, 7), readFileSync(v1.path)]));
    const slotB = join(dir, 'slot-in-disk.img');
    writeFileSync(slotB, Buffer.alloc(8192 + v2.size + 4096, 0xee));
    await applyDelta({
      delta: createReadStream(delta),
      activePayload: { path: big, offset: 65536 },
      out: { path: slotB, offset: 8192 },
      expectedSha256: v2.sha256,
      expectedSize: v2.size,
    });
    const got = readFileSync(slotB);
    expect(got.subarray(8192, 8192 + v2.size).equals(readFileSync(v2.path))).toBe(true);
    expect(got[0]).toBe(0xee); // bytes outside the slot are untouched
    expect(got[got.length - 1]).toBe(0xee);
  });

  async function roundTrip(compression: 'none' | 'gzip', salt: string) {
    const { v1: t1, v2: t2 } = releaseTrees();
    const a = await writePayload(t1, join(dir, `${compression}1.img`), salt, { compression });
    const b = await writePayload(t2, join(dir, `${compression}2.img`), salt, { compression });
    const d = join(dir, `${compression}.delta`);
    const i = await makeDelta(a.path, b.path, d, { veritySalt: b.verity.salt });
    const out = join(dir, `${compression}-out.img`);
    await applyDelta({ delta: d, activePayload: a.path, out, expectedSha256: b.sha256, expectedSize: b.size });
    expect(sha256File(out)).toBe(b.sha256);
    expect(i.bytes).toBeLessThan(b.size / 10);
    return { a, b, d, out };
  }

  it('works on uncompressed squashfs roots too', async () => {
    await roundTrip('none', '33'.repeat(32));
  });

  it('gzip roots: applies where the zlib is the publisher\'s, and is refused up front where it is not', async () => {
    const { a, b, d, out } = await roundTrip('gzip', '44'.repeat(32));
    // The same delta as published by a host whose zlib differs from this one.
    const other = join(dir, 'gzip-other-zlib.delta');
    rewriteHeader(d, other, (h) => ({ ...h, target: { ...h.target, encoder: 'zlib 0.0.0-other level 9' } }));
    copyFileSync(a.path, out);
    await expect(applyDelta({ delta: other, activePayload: a.path, out, expectedSha256: b.sha256, expectedSize: b.size })).rejects.toThrow(
      /rebuilt with zlib 0\.0\.0-other level 9, this device compresses with zlib .* install the full payload/,
    );
    expect(sha256File(out)).toBe(a.sha256); // refused before anything was written
  });
});

describe('applyDelta refuses bad input and leaves no valid-looking slot', () => {
  async function expectFailure(o: { delta?: string; active?: string; sha?: string }, message: RegExp): Promise<string> {
    const out = join(dir, `bad-${Math.random().toString(36).slice(2)}.img`);
    copyFileSync(v1.path, out); // the inactive slot holds an older, valid filesystem
    await expect(
      applyDelta({ delta: o.delta ?? delta, activePayload: o.active ?? v1.path, out, expectedSha256: o.sha ?? v2.sha256, expectedSize: v2.size }),
    ).rejects.toThrow(message);
    return out;
  }

  function notAFilesystem(path: string): void {
    expect(sha256File(path)).not.toBe(v2.sha256);
    expect(tool('unsquashfs', ['-s', path]).status).not.toBe(0);
  }

  it('rejects a delta with a corrupted byte in each of its streams, and nothing fails after the error', async () => {
    const size = statSync(delta).size;
    const headerEnd = size - info.streams.ops - info.streams.add - info.streams.literal;
    const streams = [
      [headerEnd, info.streams.ops],
      [headerEnd + info.streams.ops, info.streams.add],
      [headerEnd + info.streams.ops + info.streams.add, info.streams.literal],
    ];
    // Many places: when one stream fails, the others are left half read, and their decoders used
    // to fail later on their own with no one listening (an uncaught error that ends an agent).
    const late: unknown[] = [];
    const onLate = (err: unknown) => late.push(err);
    process.on('uncaughtException', onLate);
    try {
      for (const [start, length] of streams)
        for (let i = 1; i < 16; i++) {
          const at = start + Math.floor((length * i) / 16);
          const bad = join(dir, `corrupt-${at}.delta`);
          flipByte(delta, bad, at);
          const out = await expectFailure({ delta: bad }, /corrupt or truncated|does not rebuild|hashes to/);
          notAFilesystem(out);
          rmSync(out);
        }
      await new Promise((resolve) => setTimeout(resolve, 200));
    } finally {
      process.off('uncaughtException', onLate);
    }
    expect(late).toEqual([]);
  });

  it('rejects a corrupted header', async () => {
    const bad = join(dir, 'corrupt-header.delta');
    flipByte(delta, bad, 20);
    await expectFailure({ delta: bad }, /corrupt or truncated/);
  });

  it('rejects a truncated delta', async () => {
    for (const keep of [0.99, 0.5, 0.01]) {
      const bad = join(dir, `truncated-${keep}.delta`);
      copyFileSync(delta, bad);
      truncateSync(bad, Math.floor(statSync(delta).size * keep));
      await expectFailure({ delta: bad }, /corrupt or truncated/);
    }
  });

  it('rejects the wrong active slot before writing anything', async () => {
    const out = await expectFailure({ active: v2.path }, /not the release this delta starts from/);
    expect(sha256File(out)).toBe(v1.sha256); // untouched
  });

  it('rejects a delta for another target', async () => {
    await expectFailure({ sha: 'ab'.repeat(32) }, /not the expected target/);
  });

  it('names a missing delta', async () => {
    await expect(applyDelta({ delta: join(dir, 'nope'), activePayload: v1.path, out: join(dir, 'x'), expectedSha256: v2.sha256, expectedSize: v2.size })).rejects.toThrow(EdgekitError);
    expect(existsSync(join(dir, 'x'))).toBe(false);
  });
});
