/**
 * Real images for release tests: the gateway example (for qemu-x86_64 unless another board is
 * named), and a second build of it from a spec copy with another version (and hostname, so its
 * payloads differ).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sign, type KeyObject } from 'node:crypto';
import { REPO, builtImage, testDir, type BuiltImage } from './built-images.js';
import { canonicalJson } from '../../src/sign/signed.js';
import { tufKeyOf } from '../../src/ota/repo/role-keys.js';
import { publicKeyOf } from '../../src/sign/keys.js';

export async function gatewayImages(board = 'qemu-x86_64'): Promise<{ v1: BuiltImage; v2: BuiltImage }> {
  const v1 = await builtImage('gateway', board);
  const dir = join(testDir(), 'specs', 'gateway-v2');
  mkdirSync(dir, { recursive: true });
  const spec = readFileSync(join(REPO, 'examples', 'gateway.yml'), 'utf8');
  const changed = spec.replace(/^version: .*$/m, 'version: "1.1"').replace(/^hostname: .*$/m, 'hostname: gateway-v2');
  if (changed === spec) throw new Error('gateway.yml: version/hostname lines not found');
  const path = join(dir, 'gateway.yml');
  writeFileSync(path, changed);
  const v2 = await builtImage(path, board);
  return { v1, v2 };
}

/**
 * Metadata as an attacker (or a broken publisher) would make it: `signed` changed by `edit`, then
 * signed by `keys` (none: the old signatures stay, now invalid).
 */
export function forge(bytes: Buffer, edit: (signed: Record<string, any>) => void, keys?: KeyObject[]): Buffer {
  const doc = JSON.parse(bytes.toString('utf8'));
  edit(doc.signed);
  if (keys) {
    doc.signatures = keys.map((k) => ({
      keyid: tufKeyOf(publicKeyOf(k)).keyID,
      sig: sign(null, Buffer.from(canonicalJson(doc.signed)), k).toString('hex'),
    }));
  }
  return Buffer.from(JSON.stringify(doc, null, 2) + '\n');
}
