/**
 * The operator's role keys: ed25519 PEM files named <role>-<n>.key (+ .pub) in a keys folder.
 * Root and targets keys stay offline with the operator; snapshot and timestamp keys are the
 * online ones a fleet server holds. Keys replaced by a rotation move to <keys>/retired/, because
 * the next root must still be signed by the old root keys.
 */
import { createHash, sign, type KeyObject } from 'node:crypto';
import { mkdir, readdir, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Key, Signature } from '@tufjs/models';
import { canonicalJson } from '../../sign/signed.js';
import { generateKeyPair, loadPrivateKey, loadPublicKey, publicKeyOf } from '../../sign/keys.js';
import type { RoleName } from './layout.js';

export interface RoleKey {
  file: string;
  private: KeyObject;
  tuf: Key;
}

/** The TUF public key object for an ed25519 key; its id is the sha256 of its canonical JSON. */
export function tufKeyOf(publicKey: KeyObject): Key {
  const raw = Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url').toString('hex');
  const body = { keytype: 'ed25519', scheme: 'ed25519', keyval: { public: raw } };
  const keyID = createHash('sha256').update(canonicalJson(body)).digest('hex');
  return new Key({ keyID, keyType: 'ed25519', scheme: 'ed25519', keyVal: { public: raw } });
}

/** A signer for Metadata.sign(): TUF signatures are hex. */
export function signerFor(key: RoleKey): (data: Buffer) => Signature {
  return (data) => new Signature({ keyID: key.tuf.keyID, sig: sign(null, data, key.private).toString('hex') });
}

/** Makes `count` new keys for `role`, numbered after any that exist (live or retired). */
export async function generateRoleKeys(keysDir: string, role: RoleName, count: number): Promise<RoleKey[]> {
  await mkdir(keysDir, { recursive: true, mode: 0o700 });
  // A public half without its private key is a key kept offline elsewhere: its number is taken.
  const names = [...(await readdir(keysDir)), ...(await readdir(join(keysDir, 'retired')).catch(() => [] as string[]))];
  const taken = new Set(names.map((n) => n.replace(/\.pub$/, '')));
  const out: RoleKey[] = [];
  for (let n = 1; out.length < count; n++) {
    const name = `${role}-${n}.key`;
    if (taken.has(name)) continue;
    const files = await generateKeyPair(join(keysDir, name));
    out.push(await loadRoleKey(files.privateKey));
  }
  return out;
}

/** Every private key for `role` found in the keys folder and, if asked, its retired/ folder. */
export async function loadRoleKeys(keysDir: string, role: RoleName, withRetired = false): Promise<RoleKey[]> {
  const dirs = withRetired ? [keysDir, join(keysDir, 'retired')] : [keysDir];
  const out: RoleKey[] = [];
  for (const dir of dirs) {
    for (const f of await keyFiles(dir)) if (f.role === role) out.push(await loadRoleKey(join(dir, f.name)));
  }
  return out;
}

/**
 * The public keys of `role` in the keys folder and its retired/ folder: from `<role>-<n>.key.pub`,
 * or the private key when its public half is missing. For trusting metadata from elsewhere.
 */
export async function loadRolePublicKeys(keysDir: string, role: RoleName): Promise<Key[]> {
  const found = new Map<string, Key>();
  for (const dir of [keysDir, join(keysDir, 'retired')]) {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const m = new RegExp(`^${role}-\\d+\\.key(\\.pub)?$`).exec(name);
      if (!m || (!m[1] && names.includes(`${name}.pub`))) continue;
      const pub = m[1] ? await loadPublicKey(join(dir, name)) : publicKeyOf(await loadPrivateKey(join(dir, name)));
      const key = tufKeyOf(pub);
      found.set(key.keyID, key);
    }
  }
  return [...found.values()];
}

export async function retireKey(keysDir: string, key: RoleKey): Promise<void> {
  const retired = join(keysDir, 'retired');
  await mkdir(retired, { recursive: true, mode: 0o700 });
  const base = key.file.slice(key.file.lastIndexOf('/') + 1);
  await rename(key.file, join(retired, base));
  await rename(`${key.file}.pub`, join(retired, `${base}.pub`)).catch(() => {});
}

async function loadRoleKey(file: string): Promise<RoleKey> {
  const priv = await loadPrivateKey(file);
  return { file, private: priv, tuf: tufKeyOf(publicKeyOf(priv)) };
}

async function keyFiles(dir: string): Promise<{ name: string; role: string }[]> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names
    .map((name) => ({ name, m: /^(root|targets|snapshot|timestamp)-\d+\.key$/.exec(name) }))
    .filter((x) => x.m)
    .map((x) => ({ name: x.name, role: x.m![1] }))
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}
