/**
 * `edgekit inspect`: what an image holds, read from the image itself: its partition table (by our
 * reader), the embedded manifest, slots and payloads, and the signature status when a key is given.
 */
import type { KeyObject } from 'node:crypto';
import { open } from 'node:fs/promises';
import { readPartitionTable, type PartitionTable } from '../fs/partition-table.js';
import { verifyDocument, type SignatureStatus } from '../sign/signed.js';
import { EdgekitError } from '../util/errors.js';
import { readEmbeddedManifest, type SignedManifest } from './manifest.js';

export interface InspectReport {
  target: string;
  table: PartitionTable;
  manifest: SignedManifest;
  signature: SignatureStatus | { ok: null; reason: string };
}

export async function inspectImage(target: string, publicKey?: KeyObject): Promise<InspectReport> {
  const fh = await open(target, 'r').catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${target}: cannot open: ${err.code ?? err.message}`);
  });
  try {
    const table = readPartitionTable(fh.fd);
    const manifest = await readEmbeddedManifest(fh, target);
    const signature = publicKey
      ? verifyDocument(manifest, publicKey)
      : { ok: null, reason: `not checked (signed by ${manifest.signatures.map((s) => s.keyid.slice(0, 16)).join(', ')}; pass --pubkey)` };
    return { target, table, manifest, signature };
  } finally {
    await fh.close();
  }
}

export function formatInspect(r: InspectReport): string {
  const m = r.manifest.signed;
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  const lines = [
    `${r.target}: ${m.name} ${m.version} for ${m.board} (${m.arch}), ${mib(m.image.size)}, ${m.image.table.toUpperCase()}`,
    `signature: ${r.signature.ok === true ? 'valid' : r.signature.ok === false ? `INVALID: ${r.signature.reason}` : r.signature.reason}`,
    '',
    'partitions:',
    ...r.table.partitions.map((p) => {
      const role = m.partitions.find((x) => x.start === p.start)?.role ?? '?';
      const signed = m.partitions.find((x) => x.start === p.start)?.signed ? 'signed' : 'per-device';
      return `  ${String(p.index).padStart(2)}  ${role.padEnd(9)} ${mib(p.start).padStart(10)} +${mib(p.size).padStart(10)}  type ${p.type}  ${signed}`;
    }),
    '',
    'slots:',
    ...(['a', 'b'] as const).map((s) => {
      const slot = m.slots[s];
      return slot
        ? `  ${s.toUpperCase()}: kernel ${slot.kernel}, initramfs ${slot.initrd}, root ${slot.root === 'ram' ? 'in RAM' : `${slot.rootPayload} (dm-verity)`}`
        : `  ${s.toUpperCase()}: empty (filled by the first update)`;
    }),
    `  boot chooser: ${m.bootchooser}`,
    '',
    'payloads:',
    ...m.payloads.map((p) => `  ${p.name.padEnd(9)} ${p.format.padEnd(8)} ${mib(p.size).padStart(10)}  sha256 ${p.sha256.slice(0, 16)}…${p.verity ? `  verity root ${p.verity.rootHash.slice(0, 16)}…` : ''}`),
    '',
    `kernel: ${m.kernel.package} ${m.kernel.version}`,
    `packages: ${m.packages.length} (${m.packages.map((p) => p.name).slice(0, 8).join(', ')}${m.packages.length > 8 ? ', …' : ''})`,
  ];
  return lines.join('\n');
}
