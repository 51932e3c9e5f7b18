/**
 * `edgekit verify`: an image file or a flashed device against its embedded, signed manifest.
 * The signature is checked first (with the operator's public key), then the sha256 of every
 * signed region: partition tables, the embedded manifest's neighbours, every payload (which holds
 * the filesystems' metadata and data). Per-device partitions (config, data) are not signed.
 */
import { createHash, type KeyObject } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import { verifyDocument, type SignatureStatus } from '../sign/signed.js';
import { verifyVerity } from '../fs/verity.js';
import { EdgekitError } from '../util/errors.js';
import type { Progress } from '../util/progress.js';
import { readEmbeddedManifest, type ImageManifest, type ManifestRegion, type SignedManifest } from './manifest.js';

export interface RegionCheck {
  name: string;
  offset: number;
  size: number;
  ok: boolean;
  detail?: string;
}

export interface VerifyReport {
  target: string;
  ok: boolean;
  signature: SignatureStatus;
  manifest: ImageManifest;
  checks: RegionCheck[];
}

export async function verifyImage(target: string, publicKey: KeyObject, progress?: Progress): Promise<VerifyReport> {
  const fh = await open(target, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${target}: cannot open: ${err.code ?? err.message}`);
  });
  try {
    const doc: SignedManifest = await readEmbeddedManifest(fh, target);
    const signature = verifyDocument(doc, publicKey);
    const manifest = doc.signed;
    const checks: RegionCheck[] = [];
    if (!signature.ok) return { target, ok: false, signature, manifest, checks };

    const regions: Array<ManifestRegion & { verity?: boolean }> = [...manifest.regions, ...manifest.payloads];
    const total = regions.reduce((n, r) => n + r.size, 0);
    let done = 0;
    for (const r of regions) {
      const hash = await hashRange(fh, r.offset, r.size, (n) => progress?.({ phase: 'verify', detail: r.name, done: done + n, total }));
      done += r.size;
      const check: RegionCheck = { name: r.name, offset: r.offset, size: r.size, ok: hash === r.sha256 };
      if (!check.ok) check.detail = await locate(target, manifest, r.name);
      checks.push(check);
    }
    return { target, ok: checks.every((c) => c.ok), signature, manifest, checks };
  } finally {
    await fh.close();
  }
}

async function hashRange(fh: FileHandle, offset: number, size: number, onBytes?: (n: number) => void): Promise<string> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(4 << 20);
  let pos = 0;
  while (pos < size) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), offset + pos);
    if (bytesRead === 0) break; // short device: the hash will not match
    hash.update(buf.subarray(0, bytesRead));
    pos += bytesRead;
    onBytes?.(pos);
  }
  return hash.digest('hex');
}

/** For a root payload, the dm-verity tree names the first bad 4 KiB block. */
async function locate(target: string, m: ImageManifest, name: string): Promise<string | undefined> {
  const p = m.payloads.find((x) => x.name === name);
  if (!p?.verity) return undefined;
  const res = await verifyVerity(target, { ...p.verity, offset: p.offset }).catch(() => undefined);
  return res && !res.ok ? res.problem : undefined;
}
