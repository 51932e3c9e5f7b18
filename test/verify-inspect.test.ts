/**
 * `edgekit verify` checks the signature and every signed byte; one flipped byte anywhere mapped
 * and signed fails it, naming the region. `edgekit inspect` shows what an image holds.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { builtImage, edgekit, testDir, type BuiltImage } from './helpers/built-images.js';
import { flipByte } from './helpers/image-bytes.js';
import type { SignedManifest } from '../src/image/manifest.js';

describe('edgekit verify', () => {
  let img: BuiltImage;
  let m: SignedManifest;
  beforeAll(async () => {
    img = await builtImage('gateway', 'qemu-x86_64');
    m = JSON.parse(readFileSync(img.manifest, 'utf8'));
  });

  function copy(name: string): string {
    const out = join(testDir(), name);
    execFileSync('cp', ['--sparse=always', img.image, out]);
    return out;
  }

  it('accepts the image as built', async () => {
    const r = await edgekit(['verify', img.image, '--pubkey', img.pub, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.ok).toBe(true);
    const names = report.checks.map((c: { name: string }) => c.name);
    expect(names).toEqual(expect.arrayContaining(['partition-table', 'partition-table-backup', 'boot', 'system-a']));
  });

  // One flipped byte in each signed region: the partition tables, the ESP's FAT metadata and a
  // file in it, the root's squashfs metadata and its hash tree.
  const cases: Array<{ what: string; region: string; at: (m: SignedManifest) => number }> = [
    { what: 'the protective MBR', region: 'partition-table', at: () => 446 + 4 },
    { what: 'a GPT partition entry', region: 'partition-table', at: () => 1024 + 16 },
    { what: 'the backup GPT header', region: 'partition-table-backup', at: (m) => m.signed.regions.find((r) => r.name === 'partition-table-backup')!.offset + 16 * 1024 + 100 },
    { what: 'the ESP boot sector', region: 'boot', at: (m) => payload(m, 'boot').offset + 20 },
    { what: 'the middle of the ESP', region: 'boot', at: (m) => payload(m, 'boot').offset + Math.floor(payload(m, 'boot').size / 2) },
    { what: 'the root superblock', region: 'system-a', at: (m) => payload(m, 'system-a').offset + 8 },
    { what: 'the root hash tree', region: 'system-a', at: (m) => payload(m, 'system-a').offset + payload(m, 'system-a').verity!.hashOffset + 64 },
  ];
  for (const c of cases) {
    it(`fails on a flipped byte in ${c.what}, naming ${c.region}`, async () => {
      const bad = copy(`verify-${c.region}.img`);
      flipByte(bad, c.at(m));
      const r = await edgekit(['verify', bad, '--pubkey', img.pub]);
      expect(r.code).not.toBe(0);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(new RegExp(`verification failed: .*\\b${c.region}\\b`));
    });
  }

  it('fails on a changed manifest (the signature no longer matches)', async () => {
    const bad = copy('verify-manifest.img');
    // A byte inside the embedded JSON: the image name's first letter.
    const raw = readFileSync(bad).subarray(32 * 1024, 32 * 1024 + 4096).toString('latin1');
    const at = raw.indexOf('"name":"gateway"') + '"name":"'.length;
    flipByte(bad, 32 * 1024 + at);
    const r = await edgekit(['verify', bad, '--pubkey', img.pub]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/signature|manifest/);
  });

  it('fails with another key', async () => {
    const other = join(testDir(), 'other.key');
    await edgekit(['keys', 'generate', '-o', other]);
    const r = await edgekit(['verify', img.image, '--pubkey', `${other}.pub`]);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/not signed by key/);
  });

  it('ignores the per-device config partition (written at flash time, unsigned)', async () => {
    const cfg = m.signed.partitions.find((p) => p.role === 'config')!;
    const changed = copy('verify-config.img');
    flipByte(changed, cfg.start + 4096 * 3);
    const r = await edgekit(['verify', changed, '--pubkey', img.pub]);
    expect(r.code, r.stderr).toBe(0);
  });

  it('works on a block device path too (a loop device, as root)', async () => {
    if (process.getuid?.() !== 0) return;
    const dev = execFileSync('losetup', ['--find', '--show', '--read-only', img.image], { encoding: 'utf8' }).trim();
    try {
      const r = await edgekit(['verify', dev, '--pubkey', img.pub]);
      expect(r.code, r.stderr).toBe(0);
    } finally {
      execFileSync('losetup', ['-d', dev]);
    }
  });
});

describe('edgekit inspect', () => {
  it('shows partitions, slots, payloads, manifest and signature status', async () => {
    const img = await builtImage('gateway', 'qemu-x86_64');
    const r = await edgekit(['inspect', img.image, '--pubkey', img.pub]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/gateway 1\.0 for qemu-x86_64/);
    expect(r.stdout).toMatch(/signature: valid/);
    expect(r.stdout).toMatch(/system-a .*signed/);
    expect(r.stdout).toMatch(/config .*per-device/);
    expect(r.stdout).toMatch(/B: empty/);
    expect(r.stdout).toMatch(/verity root/);
    const j = await edgekit(['inspect', img.image, '--json']);
    const report = JSON.parse(j.stdout);
    expect(report.table.scheme).toBe('gpt');
    expect(report.manifest.signed.board).toBe('qemu-x86_64');
    expect(report.signature.ok).toBeNull();
  });
});

function payload(m: SignedManifest, name: string) {
  return m.signed.payloads.find((p) => p.name === name)!;
}
