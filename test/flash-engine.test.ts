/**
 * `edgekit flash` through the real CLI: a built image, from raw, .gz, .xz, .zst and HTTP sources,
 * to regular files and loop devices, read back with sfdisk, mtools, cmp and `edgekit verify`.
 * Failure paths: a corrupted source, a download cut short, a card that fails writes with EIO
 * (FUSE), a read-only device, a wrong key. None may print "ok" or exit 0.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { builtImage, edgekit, testDir, type BuiltImage } from './helpers/built-images.js';
import { flipByte, sh } from './helpers/image-bytes.js';
import { bmapRanges, failingDisk, hasFusepy, imageVariants, isRoot, loopDevice, serveFolder } from './helpers/flash-fixtures.js';

let built: BuiltImage;
let src: ReturnType<typeof imageVariants>;
let work: string;
let n = 0;
const fresh = (name: string) => join(work, `${++n}-${name}`);

beforeAll(async () => {
  built = await builtImage('minimal', 'qemu-x86_64');
  work = join(testDir(), 'flash-engine');
  src = imageVariants(built.image, built.bmap, join(work, 'src'));
});

/** sfdisk's view of the target: partition starts (bytes) by name. */
function partitions(target: string): Array<{ start: number; size: number; name?: string }> {
  const t = JSON.parse(sh('sfdisk', ['--json', target])).partitiontable;
  expect(t.label).toBe('gpt');
  return t.partitions.map((p: { start: number; size: number; name?: string }) => ({ start: p.start * 512, size: p.size * 512, name: p.name }));
}

/** Every check a flashed target must pass: same bytes as the image, a table sfdisk reads, an ESP mtools lists, a valid signature. */
async function expectGoodCopy(target: string, opts: { sameBytes?: boolean } = {}) {
  const parts = partitions(target);
  expect(parts.length).toBeGreaterThanOrEqual(3);
  const esp = sh('mdir', ['-i', `${target}@@${parts[0].start}`, '-/', '::/EFI']);
  expect(esp).toMatch(/^BOOTX64 +EFI +\d+/m);
  const v = await edgekit(['verify', target, '--pubkey', built.pub]);
  expect(v.stderr + v.stdout).toMatch(/signature: valid/);
  expect(v.code).toBe(0);
  // The image's own bytes, up to its size (a device is larger): cmp is the arbiter.
  if (opts.sameBytes !== false) sh('cmp', ['-n', String(statSync(src.raw).size), src.raw, target]);
}

function expectFailure(r: { code: number; stdout: string; stderr: string }, pattern: RegExp) {
  expect(r.code).not.toBe(0);
  expect(r.stdout + r.stderr).toMatch(pattern);
  expect(r.stdout).not.toMatch(/^ok /m);
}

describe('sources', () => {
  for (const kind of ['raw', 'gz', 'xz', 'zst'] as const) {
    it(`writes a ${kind} image to a file, sparsely, and reads it back`, async () => {
      const target = fresh(`${kind}.img`);
      const r = await edgekit(['flash', src[kind], '--to', target, '--pubkey', built.pub, '--json']);
      expect(r.stderr).toBe('');
      expect(r.code).toBe(0);
      const result = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).find((l) => l.type === 'result');
      expect(result).toMatchObject({ target, ok: true, verified: true, readBack: 'direct' });
      await expectGoodCopy(target);
      // Only the mapped blocks were written: the file's allocated size is about the mapped size.
      const mapped = bmapRanges(src.bmap).reduce((s, x) => s + x.end - x.start, 0);
      expect(statSync(target).blocks * 512).toBeLessThan(mapped + (2 << 20));
    });
  }

  it('downloads over http (with the .bmap beside it) and writes two targets in one run', async () => {
    const server = await serveFolder(join(work, 'src'));
    try {
      const a = fresh('http-a.img');
      const b = fresh('http-b.img');
      const r = await edgekit(['flash', server.url(`${src.raw.split('/').pop()}.zst`), '--to', a, '--to', b, '--pubkey', built.pub]);
      expect(r.stderr).not.toMatch(/no block map/);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^ok +${a}: .*verified`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^ok +${b}: .*verified`, 'm'));
      await expectGoodCopy(a);
      await expectGoodCopy(b);
    } finally {
      await server.close();
    }
  });

  it('writes the non-zero blocks when there is no .bmap', async () => {
    const dir = join(work, 'nobmap');
    mkdirSync(dir, { recursive: true });
    const img = join(dir, 'plain.img.zst');
    copyFileSync(src.zst, img);
    const target = fresh('nobmap.img');
    const r = await edgekit(['flash', img, '--to', target, '--pubkey', built.pub]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/no block map/);
    await expectGoodCopy(target);
  });
});

describe('refusals and failures', () => {
  it('refuses an image signed by another key and writes nothing', async () => {
    const other = join(work, 'other.key');
    if (!existsSync(other)) await edgekit(['keys', 'generate', '-o', other]);
    const target = fresh('wrongkey.img');
    const r = await edgekit(['flash', src.raw, '--to', target, '--pubkey', `${other}.pub`]);
    expectFailure(r, /refusing to flash: manifest signature not signed by key/);
    expect(existsSync(target)).toBe(false);
  });

  it('--insecure skips the check and says so on stderr', async () => {
    const target = fresh('insecure.img');
    const r = await edgekit(['flash', src.raw, '--to', target, '--insecure']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/WARNING: --insecure: the image signature is NOT checked/);
    await expectGoodCopy(target);
  });

  it('a byte flipped inside a mapped range fails naming the signed region (or the range), and nothing reports success', async () => {
    const dir = join(work, 'corrupt');
    mkdirSync(dir, { recursive: true });
    const img = join(dir, 'bad.img');
    copyFileSync(src.raw, img);
    copyFileSync(src.bmap, join(dir, 'bad.bmap'));
    // The largest range, past the first MiB (the manifest must still read): its middle byte.
    const range = bmapRanges(src.bmap).filter((x) => x.start >= 1 << 20).sort((x, y) => y.end - y.start - (x.end - x.start))[0];
    const at = range.start + Math.floor((range.end - range.start) / 2);
    flipByte(img, at);
    // Inside a signed region the signed hash catches it (naming the region); elsewhere the block map's.
    const manifest = JSON.parse(readFileSync(built.manifest, 'utf8')).signed;
    const region = [...manifest.regions, ...manifest.payloads].find((x: { offset: number; size: number }) => x.offset <= at && at < x.offset + x.size);
    const expected = region
      ? new RegExp(`signed region ${region.name} \\(bytes ${region.offset}-${region.offset + region.size - 1}\\) does not match the signed manifest`)
      : new RegExp(`does not match the block map in blocks ${range.first}-${range.last} \\(bytes ${range.start}-${range.end - 1}\\)`);
    sh('zstd', ['-q', '-k', img]);
    for (const source of [img, `${img}.zst`]) {
      const target = fresh('corrupt.img');
      const r = await edgekit(['flash', source, '--to', target, '--pubkey', built.pub]);
      expectFailure(r, expected);
      expect(r.stdout).toMatch(/^FAIL /m);
    }
  });

  it('a byte flipped in a mapped range outside the signed regions (the config partition) fails naming the range', async () => {
    const dir = join(work, 'corrupt-config');
    mkdirSync(dir, { recursive: true });
    const img = join(dir, 'bad.img');
    copyFileSync(src.raw, img);
    copyFileSync(src.bmap, join(dir, 'bad.bmap'));
    const manifest = JSON.parse(readFileSync(built.manifest, 'utf8')).signed;
    const cfg = manifest.partitions.find((p: { role: string }) => p.role === 'config');
    const range = bmapRanges(src.bmap).find((x) => x.start >= cfg.start && x.end <= cfg.start + cfg.size)!;
    flipByte(img, range.start + 1);
    const r = await edgekit(['flash', img, '--to', fresh('corrupt-config.img'), '--pubkey', built.pub]);
    expectFailure(r, new RegExp(`does not match the block map in blocks ${range.first}-${range.last} \\(bytes ${range.start}-${range.end - 1}\\)`));
  });

  it('a download cut short fails clearly', async () => {
    const server = await serveFolder(join(work, 'src'), { cutAfter: 3 << 20 });
    try {
      for (const name of [src.raw, src.zst].map((p) => p.split('/').pop()!)) {
        const target = fresh('cut.img');
        const r = await edgekit(['flash', server.url(name), '--to', target, '--pubkey', built.pub]);
        expectFailure(r, /download ended early: \d+ of \d+ bytes|truncated/);
      }
    } finally {
      await server.close();
    }
  });

  it.skipIf(!hasFusepy())('a write error mid-stream fails that target naming device and offset; the other target succeeds', async () => {
    const range = bmapRanges(src.bmap).filter((x) => x.start >= 1 << 20).sort((x, y) => y.end - y.start - (x.end - x.start))[0];
    const failAt = range.start + 4096 * 3 + 17;
    const disk = await failingDisk(join(work, 'fuse-mnt'), join(work, 'fuse-backing'), statSync(src.raw).size, failAt);
    try {
      const good = fresh('beside-eio.img');
      const r = await edgekit(['flash', src.zst, '--to', disk.file, '--to', good, '--pubkey', built.pub, '--json']);
      expect(r.code).not.toBe(0);
      const results = r.stdout.trim().split('\n').map((l) => JSON.parse(l)).filter((l) => l.type === 'result');
      const bad = results.find((x) => x.target === disk.file);
      expect(bad.ok).toBe(false);
      const m = /^(\S+): write failed in bytes (\d+)-(\d+): EIO/.exec(bad.error);
      expect(m, bad.error).not.toBeNull();
      expect(m![1]).toBe(disk.file);
      expect(Number(m![2])).toBeLessThanOrEqual(failAt);
      expect(Number(m![3])).toBeGreaterThanOrEqual(failAt);
      expect(results.find((x) => x.target === good)).toMatchObject({ ok: true, verified: true });
      await expectGoodCopy(good);
      expect(r.stderr).toMatch(/1 of 2 target\(s\) failed/);
    } finally {
      await disk.unmount();
    }
  });
});

describe.skipIf(!isRoot)('block devices (loop)', () => {
  it('writes a used (0xff-filled) loop device and a file together; both verify', async () => {
    const backing = fresh('loop-backing');
    // A used card: old data everywhere. Unmapped blocks inside signed payloads must still end up zero.
    sh('sh', ['-c', 'tr "\\000" "\\377" < /dev/zero | head -c 268435456 > "$1"', 'sh', backing]);
    const loop = loopDevice(backing, 256 << 20);
    try {
      const file = fresh('beside-loop.img');
      // A loop device is not removable: --force is what lets edgekit write it.
      const r = await edgekit(['flash', src.xz, '--to', loop.dev, '--to', file, '--pubkey', built.pub, '--force']);
      expect(r.stderr).not.toMatch(/page cache/);
      expect(r.code).toBe(0);
      // Outside the signed regions (slot B, data) the old bytes stay, as with bmaptool: no cmp.
      await expectGoodCopy(loop.dev, { sameBytes: false });
      await expectGoodCopy(file);
    } finally {
      loop.detach();
    }
  });

  it('refuses a read-only loop device before writing anything', async () => {
    const loop = loopDevice(fresh('ro-backing'), 256 << 20, { readOnly: true });
    const other = fresh('beside-ro.img');
    try {
      const r = await edgekit(['flash', src.raw, '--to', other, '--to', loop.dev, '--pubkey', built.pub, '--force']);
      expectFailure(r, new RegExp(`${loop.dev}.*read-only`));
      expect(existsSync(other)).toBe(false);
    } finally {
      loop.detach();
    }
  });
});

describe('options', () => {
  it('--no-verify, --log and --set: the log has a line per target, the config partition has the setting', async () => {
    const a = fresh('log-a.img');
    const b = fresh('log-b.img');
    const log = fresh('flash.log');
    const r = await edgekit(['flash', src.gz, '--to', a, '--to', b, '--pubkey', built.pub, '--no-verify', '--log', log, '--set', 'hostname=bench-7']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/not read back \(--no-verify\)/);
    const lines = readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.target)).toEqual([a, b]);
    const bmapSha = sh('sha256sum', [src.bmap]).split(' ')[0];
    for (const l of lines) expect(l).toMatchObject({ result: 'ok', image: src.gz.split('/').pop(), name: 'minimal', bmapSha256: bmapSha, signature: 'valid' });
    for (const t of [a, b]) {
      const config = partitions(t).find((p) => p.name === 'config');
      expect(config).toBeDefined();
      expect(sh('mtype', ['-i', `${t}@@${config!.start}`, '::/hostname']).trim()).toBe('bench-7');
      // The signed parts are untouched by the settings.
      expect((await edgekit(['verify', t, '--pubkey', built.pub])).code).toBe(0);
    }
  });

  it('refuses a target given twice, or the image itself as a target', async () => {
    const target = fresh('twice.img');
    expectFailure(await edgekit(['flash', src.raw, '--to', target, '--to', target, '--pubkey', built.pub]), /twice\.img: the same file or device as/);
    expect(existsSync(target)).toBe(false);
    const before = sh('sha256sum', [src.zst]);
    expectFailure(await edgekit(['flash', src.zst, '--to', src.zst, '--pubkey', built.pub]), /the same file or device as the image/);
    expect(sh('sha256sum', [src.zst])).toBe(before);
  });

  it('without --pubkey or --insecure it refuses to start', async () => {
    const target = fresh('nokey.img');
    const r = await edgekit(['flash', src.raw, '--to', target]);
    expectFailure(r, /give --pubkey/);
    expect(existsSync(target)).toBe(false);
  });
});
