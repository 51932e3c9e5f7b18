/**
 * The image manifest: what an image holds and the hash of every byte that matters (partition
 * table, each payload), signed with the operator's ed25519 key. A copy is embedded in the image
 * itself (in the gap before the first partition), so a flashed card can be verified with no side
 * files.
 */
import type { FileHandle } from 'node:fs/promises';
import type { SignedDocument } from '../sign/signed.js';
import { EdgekitError } from '../util/errors.js';

export const MANIFEST_FORMAT = 'edgekit-image/1';
/** Byte offset of the embedded manifest: after GPT's primary entries (LBA 34), before 1 MiB. */
export const EMBEDDED_MANIFEST_OFFSET = 32 * 1024;
export const EMBEDDED_MANIFEST_LIMIT = 1024 * 1024 - EMBEDDED_MANIFEST_OFFSET;
const MAGIC = Buffer.from('EDGEKIT-MANIFEST');

export interface ManifestRegion {
  name: string;
  offset: number;
  size: number;
  sha256: string;
}

export interface ManifestPayload extends ManifestRegion {
  /** The partition role the payload fills. */
  partition: string;
  format: 'fat' | 'squashfs';
  verity?: { rootHash: string; salt: string; dataBlocks: number; hashOffset: number };
}

export interface ManifestPartition {
  number: number;
  role: string;
  start: number;
  size: number;
  type: string;
  /** Written per device (config) or at run time (data): never covered by the signature. */
  signed: boolean;
}

export interface ManifestPackage {
  name: string;
  version: string;
  arch: string;
  sha256: string;
  source?: string;
}

export interface SlotBoot {
  kernel: string;
  initrd: string;
  cmdline: string;
  devicetree?: string;
  root: 'ram' | 'disk';
  /** The payload holding the root filesystem when root is on disk. */
  rootPayload?: string;
}

export interface ImageManifest {
  format: typeof MANIFEST_FORMAT;
  name: string;
  version: string;
  board: string;
  arch: string;
  sourceDateEpoch: number;
  image: { size: number; table: 'gpt' | 'mbr'; blockSize: number; mappedBlocks: number };
  partitions: ManifestPartition[];
  regions: ManifestRegion[];
  payloads: ManifestPayload[];
  slots: { a: SlotBoot; b: SlotBoot | null };
  bootchooser: string;
  kernel: { package: string; version: string; image: string; sha256: string };
  packages: ManifestPackage[];
}

export type SignedManifest = SignedDocument<ImageManifest>;

export function encodeEmbeddedManifest(doc: SignedManifest): Buffer {
  const json = Buffer.from(JSON.stringify(doc));
  const header = Buffer.alloc(MAGIC.length + 4);
  MAGIC.copy(header);
  header.writeUInt32LE(json.length, MAGIC.length);
  const out = Buffer.concat([header, json]);
  if (out.length > EMBEDDED_MANIFEST_LIMIT) {
    throw new EdgekitError(`manifest is ${out.length} bytes; the image has room for ${EMBEDDED_MANIFEST_LIMIT}`);
  }
  return out;
}

/** Reads the manifest embedded in an image file or block device. */
export async function readEmbeddedManifest(fh: FileHandle, where: string): Promise<SignedManifest> {
  const head = Buffer.alloc(MAGIC.length + 4);
  await fh.read(head, 0, head.length, EMBEDDED_MANIFEST_OFFSET);
  if (!head.subarray(0, MAGIC.length).equals(MAGIC)) {
    throw new EdgekitError(`${where}: no edgekit manifest at byte ${EMBEDDED_MANIFEST_OFFSET} (not an edgekit image?)`);
  }
  const len = head.readUInt32LE(MAGIC.length);
  if (len > EMBEDDED_MANIFEST_LIMIT) throw new EdgekitError(`${where}: embedded manifest length ${len} is corrupt`);
  const json = Buffer.alloc(len);
  await fh.read(json, 0, len, EMBEDDED_MANIFEST_OFFSET + head.length);
  try {
    const doc = JSON.parse(json.toString('utf8')) as SignedManifest;
    if (doc?.signed?.format !== MANIFEST_FORMAT) throw new Error(`format ${String(doc?.signed?.format)}`);
    return doc;
  } catch (err) {
    throw new EdgekitError(`${where}: embedded manifest is corrupt (${(err as Error).message})`);
  }
}
