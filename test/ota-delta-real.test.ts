/**
 * Deltas between real images built with the builder, and the device-side memory bound: applying
 * runs in a child process whose whole peak RSS (Node included) must stay under 96 MiB, on a
 * payload larger than that bound so holding it in memory could not pass.
 * Needs dist/ built (npm run build) and the bsdiff, bzip2, squashfs-tools and cryptsetup-bin packages.
 */
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeDelta } from '../src/ota/delta/index.js';
import { Tree } from '../src/tree/tree.js';
import { builtImage, REPO, testDir } from './helpers/built-images.js';
import { applyInChild } from './helpers/delta-child.js';
import { fakeBinary, rebuiltBinary, sha256File, writePayload } from './helpers/delta-trees.js';

const LIMIT = 96 * 1024 * 1024;
let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'edgekit-delta-real-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Extracted { path: string; size: number; sha256: string; salt: string; rootHash: string; hashOffset: number; dataBlocks: number }

/** The root payload of a built image, cut out by its manifest's offset and size. */
async function rootPayload(manifestPath: string, image: string, out: string): Promise<Extracted> {
  const m = JSON.parse(readFileSync(manifestPath, 'utf8')).signed;
  const p = m.payloads.find((x: { partition: string }) => x.partition === 'system-a');
  const fh = await open(image, 'r');
  const buf = Buffer.alloc(p.size);
  await fh.read(buf, 0, p.size, p.offset);
  await fh.close();
  writeFileSync(out, buf);
  return { path: out, size: p.size, sha256: p.sha256, ...p.verity };
}

describe('deltas between built images', () => {
  it('rebuilds the next release of a real gateway root byte for byte, within 96 MiB', async () => {
    const v1img = await builtImage('gateway', 'qemu-x86_64');
    const spec = join(testDir(), 'gateway-1.1.yml');
    const base = readFileSync(join(REPO, 'examples/gateway.yml'), 'utf8');
    writeFileSync(spec, base.replace('version: "1.0"', 'version: "1.1"').replace('packages: [busybox-static]', 'packages: [busybox-static, less]'));
    const v2img = await builtImage(spec, 'qemu-x86_64');
    const a = await rootPayload(v1img.manifest, v1img.image, join(dir, 'a.img'));
    const b = await rootPayload(v2img.manifest, v2img.image, join(dir, 'b.img'));
    expect(a.sha256).not.toBe(b.sha256);
    const delta = join(dir, 'gw.delta');
    const info = await makeDelta(a.path, b.path, delta, { veritySalt: b.salt });
    expect(info.verityRecomputed).toBe(true);
    expect(info.bytes).toBeLessThan(b.size / 4);

    const out = join(dir, 'gw-out.img');
    const { peakRss } = await applyInChild({ delta, active: a.path, out, sha256: b.sha256, size: b.size });
    expect(sha256File(out)).toBe(b.sha256);
    expect(peakRss).toBeLessThan(LIMIT);
    const v = spawnSync('veritysetup', ['verify', out, out, b.rootHash, '--no-superblock', `--hash-offset=${b.hashOffset}`, `--salt=${b.salt}`, `--data-blocks=${b.dataBlocks}`]);
    expect(v.status, v.stderr?.toString()).toBe(0);
    expect(spawnSync('unsquashfs', ['-l', out]).stdout.toString()).toMatch(/squashfs-root\/usr\/bin\/less/);
  }, 600_000);

  it('applies a delta to a payload larger than the memory bound without holding it', async () => {
    const lib = fakeBinary('big-lib', 2_000_000);
    const tree = (v: 1 | 2) => {
      const t = new Tree();
      // Incompressible data, so the payload stays larger than the bound.
      for (let i = 0; i < 12; i++) t.file(`usr/share/blob${i}.bin`, blob(i));
      t.file('usr/lib/libbig.so', v === 1 ? lib : rebuiltBinary(lib), 0o755);
      t.file('etc/version', `v${v}\n`);
      return t;
    };
    const blobs = Array.from({ length: 12 }, () => randomBytes(10 << 20));
    const blob = (i: number) => blobs[i];
    const a = await writePayload(tree(1), join(dir, 'big1.img'), 'aa'.repeat(32));
    const b = await writePayload(tree(2), join(dir, 'big2.img'), 'bb'.repeat(32));
    blobs.length = 0;
    expect(b.size).toBeGreaterThan(LIMIT + (24 << 20));
    const delta = join(dir, 'big.delta');
    const info = await makeDelta(a.path, b.path, delta, { veritySalt: b.verity.salt });
    expect(info.bytes).toBeLessThan(1 << 20);
    const out = join(dir, 'big-out.img');
    const { peakRss } = await applyInChild({ delta, active: a.path, out, sha256: b.sha256, size: b.size });
    expect(sha256File(out)).toBe(b.sha256);
    expect(peakRss).toBeLessThan(LIMIT);
  }, 600_000);
});
