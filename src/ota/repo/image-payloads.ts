/**
 * Takes a built image apart into the files a slot update needs: the slot's boot files (kernel,
 * initrd, device tree, and the device trees in the slot's folder) from the boot FAT, and the root
 * payload (squashfs + dm-verity tree) as the exact byte range the manifest hashed. Everything is
 * checked against the embedded manifest.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { FatReader } from '../../fs/fat-reader.js';
import { readEmbeddedManifest, type ImageManifest, type SignedManifest } from '../../image/manifest.js';
import { EdgekitError } from '../../util/errors.js';
import { sha256OfFile } from '../../util/hash.js';
import type { FileCustom } from './release-info.js';

export interface ExtractedFile {
  kind: FileCustom['kind'];
  /** File name inside the release folder ('vmlinuz', 'system-a.squashfs', 'broadcom/x.dtb'). */
  name: string;
  path: string;
  /** A device tree from the slot's folder: its path inside that folder. */
  inSlot?: string;
}

export interface ExtractedRelease {
  manifest: SignedManifest;
  manifestFile: string;
  files: ExtractedFile[];
}

export async function extractRelease(image: string, stagingDir: string): Promise<ExtractedRelease> {
  const fh = await open(image, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${image}: cannot open image (${err.code ?? err.message})`);
  });
  let manifest: SignedManifest;
  try {
    manifest = await readEmbeddedManifest(fh, image);
  } finally {
    await fh.close();
  }
  const m = manifest.signed;
  const files: ExtractedFile[] = [];
  const slot = m.slots.a;
  const boot = m.payloads.find((p) => p.partition === 'boot' && p.format === 'fat');
  if (!boot) throw new EdgekitError(`${image}: the manifest lists no FAT boot payload holding the slot's boot files`);
  const fat = await FatReader.open(image, boot.offset);
  try {
    const bootFiles: [ExtractedFile['kind'], string | undefined][] = [
      ['kernel', slot.kernel],
      ['initrd', slot.initrd],
      ['devicetree', slot.devicetree],
    ];
    for (const [kind, fatPath] of bootFiles) {
      if (!fatPath) continue;
      const name = fatPath.slice(fatPath.lastIndexOf('/') + 1);
      const out = join(stagingDir, name);
      await writeFile(out, await fat.readFile(fatPath));
      files.push({ kind, name, path: out });
    }
    // The device trees in the slot's folder (a Raspberry Pi slot: the ones boot.scr or the
    // firmware's os_prefix load), kept by their path inside it.
    const slotFolder = slot.kernel.includes('/') ? `${slot.kernel.slice(0, slot.kernel.lastIndexOf('/'))}/` : undefined;
    if (slotFolder) {
      for (const e of await fat.list()) {
        if (e.isDir || !e.path.startsWith(slotFolder) || !/\.dtb$/i.test(e.path) || e.path === slot.devicetree) continue;
        const rel = e.path.slice(slotFolder.length);
        const out = join(stagingDir, 'slot-dtbs', rel);
        await mkdir(dirname(out), { recursive: true });
        await writeFile(out, await fat.readFile(e.path));
        files.push({ kind: 'devicetree', name: rel, path: out, inSlot: rel });
      }
    }
  } finally {
    await fat.close();
  }
  if (slot.root === 'disk') files.push(await extractRootPayload(image, m, stagingDir));
  const manifestFile = join(stagingDir, 'manifest.json');
  await writeFile(manifestFile, JSON.stringify(manifest, null, 2) + '\n');
  return { manifest, manifestFile, files };
}

async function extractRootPayload(image: string, m: ImageManifest, stagingDir: string): Promise<ExtractedFile> {
  const payload = m.payloads.find((p) => p.name === m.slots.a.rootPayload);
  if (!payload) throw new EdgekitError(`${image}: slot a's root payload "${m.slots.a.rootPayload}" is not in the manifest`);
  const name = `${payload.name.replace(/-a$/, '')}.${payload.format}`;
  const out = join(stagingDir, name);
  await pipeline(createReadStream(image, { start: payload.offset, end: payload.offset + payload.size - 1 }), createWriteStream(out));
  const sha = await sha256OfFile(out);
  if (sha !== payload.sha256) {
    throw new EdgekitError(`${image}: root payload "${payload.name}" has sha256 ${sha.slice(0, 16)}, the manifest says ${payload.sha256.slice(0, 16)} (image changed after build?)`);
  }
  return { kind: 'root', name, path: out };
}
