/**
 * Lays payloads out on a disk image as the plan says: partition table, payloads, and the signed
 * manifest embedded before the first partition. Returns the block map and the manifest.
 */
import { createHash } from 'node:crypto';
import { buildGpt } from '../fs/gpt.js';
import { buildMbr } from '../fs/mbr.js';
import type { VerityResult } from '../fs/verity.js';
import { stableGuid, stableUint32 } from '../build/ids.js';
import type { BlockMap } from './bmap.js';
import type { LayoutPlan } from './layout.js';
import {
  EMBEDDED_MANIFEST_OFFSET,
  encodeEmbeddedManifest,
  type ImageManifest,
  type ManifestPayload,
  type ManifestRegion,
  type SignedManifest,
} from './manifest.js';
import { SparseImageWriter } from './sparse-writer.js';
import { sha256OfFile } from '../util/hash.js';

export interface PayloadFile {
  role: string;
  name: string;
  path: string;
  format: 'fat' | 'squashfs';
  verity?: VerityResult;
  /** Per-device content (the config partition): written, but not covered by the manifest. */
  unsigned?: boolean;
}

export interface AssembleOptions {
  path: string;
  plan: LayoutPlan;
  payloads: PayloadFile[];
  /** What the image is (name, version, board): seeds the stable GUIDs. */
  ids: string[];
  manifest: Omit<ImageManifest, 'image' | 'partitions' | 'regions' | 'payloads'>;
  sign: (m: ImageManifest) => SignedManifest;
}

export interface AssembledImage {
  blockMap: BlockMap;
  signedManifest: SignedManifest;
  imageSha256: string;
}

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

export async function assembleImage(o: AssembleOptions): Promise<AssembledImage> {
  const { plan } = o;
  const writer = await SparseImageWriter.create(o.path, plan.diskSize);
  try {
    const regions: ManifestRegion[] = [];
    for (const w of partitionTableWrites(plan, o.ids)) {
      await writer.write(w.offset, w.data);
      regions.push({ name: w.name, offset: w.offset, size: w.data.length, sha256: sha256(w.data) });
    }

    const payloads: ManifestPayload[] = [];
    for (const p of o.payloads) {
      const part = plan.partitions.find((x) => x.role === p.role);
      if (!part) throw new Error(`no ${p.role} partition in the layout`);
      const { sha256: hash, size } = await writer.copyFile(part.start, p.path);
      if (size > part.size) throw new Error(`${p.name} (${size} bytes) overflows its partition (${part.size})`);
      if (p.unsigned) continue;
      payloads.push({
        name: p.name,
        partition: p.role,
        format: p.format,
        offset: part.start,
        size,
        sha256: hash,
        ...(p.verity
          ? { verity: { rootHash: p.verity.rootHash, salt: p.verity.salt, dataBlocks: p.verity.dataBlocks, hashOffset: p.verity.hashOffset } }
          : {}),
      });
    }

    const unsignedRoles = new Set(['config', 'data', ...o.payloads.filter((p) => p.unsigned).map((p) => p.role)]);
    const manifest: ImageManifest = {
      ...o.manifest,
      image: { size: plan.diskSize, table: plan.table, blockSize: 4096, mappedBlocks: 0 },
      partitions: plan.partitions.map((p) => ({
        number: p.number,
        role: p.role,
        start: p.start,
        size: p.size,
        type: p.gptType ?? `0x${p.mbrType!.toString(16).padStart(2, '0')}`,
        signed: !unsignedRoles.has(p.role) && (payloads.some((x) => x.partition === p.role) || p.role.startsWith('system-')),
      })),
      regions,
      payloads,
    };
    const signed = o.sign(manifest);
    await writer.write(EMBEDDED_MANIFEST_OFFSET, encodeEmbeddedManifest(signed));
    const blockMap = await writer.finish();
    return { blockMap, signedManifest: signed, imageSha256: await sha256OfFile(o.path) };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

interface NamedWrite {
  name: string;
  offset: number;
  data: Buffer;
}

export function partitionTableWrites(plan: LayoutPlan, ids: string[]): NamedWrite[] {
  const SECTOR = 512;
  if (plan.table === 'gpt') {
    const gpt = buildGpt({
      diskSize: plan.diskSize,
      diskGuid: stableGuid('disk', ...ids),
      partitions: plan.partitions.map((p) => ({
        name: p.role,
        typeGuid: p.gptType!,
        uniqueGuid: stableGuid('partition', p.role, ...ids),
        firstLba: p.start / SECTOR,
        lastLba: (p.start + p.size) / SECTOR - 1,
      })),
    });
    return [
      { name: 'partition-table', offset: 0, data: gpt.primary },
      { name: 'partition-table-backup', offset: gpt.backupOffset, data: gpt.backup },
    ];
  }
  const writes = buildMbr({
    diskSize: plan.diskSize,
    diskSignature: stableUint32('disk', ...ids),
    partitions: plan.partitions.map((p) => ({
      type: p.mbrType!,
      firstLba: p.start / SECTOR,
      sectors: p.size / SECTOR,
      bootable: p.role === 'boot',
      logical: p.logical,
    })),
  });
  return writes.map((w, i) => ({ name: i === 0 ? 'partition-table' : `partition-table-ebr-${i}`, offset: w.offset, data: w.data }));
}
