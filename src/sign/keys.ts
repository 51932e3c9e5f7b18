/**
 * ed25519 signing keys (node:crypto): PEM files, the private one written 0600. A key id is the
 * sha256 of the raw 32-byte public key, so it is the same whatever file format carried it.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { EdgekitError } from '../util/errors.js';
import { writeFileAtomic } from '../util/atomic.js';

export interface KeyPairFiles {
  privateKey: string;
  publicKey: string;
  keyId: string;
}

export async function generateKeyPair(privatePath: string, publicPath = `${privatePath}.pub`): Promise<KeyPairFiles> {
  for (const p of [privatePath, publicPath]) {
    const exists = await stat(p).then(() => true, () => false);
    if (exists) throw new EdgekitError(`${p}: already exists; refusing to overwrite a key`);
  }
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  await writeFileAtomic(privatePath, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  await writeFileAtomic(publicPath, publicKey.export({ type: 'spki', format: 'pem' }) as string, 0o644);
  return { privateKey: privatePath, publicKey: publicPath, keyId: keyIdOf(publicKey) };
}

export async function loadPrivateKey(path: string): Promise<KeyObject> {
  const pem = await readKeyFile(path, 'private key');
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`a ${key.asymmetricKeyType} key`);
    return key;
  } catch (err) {
    throw new EdgekitError(`${path}: not an ed25519 private key (${(err as Error).message.split('\n')[0]})`);
  }
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  const pem = await readKeyFile(path, 'public key');
  return parsePublicKey(pem, path);
}

export function parsePublicKey(pem: string | Buffer, where: string): KeyObject {
  try {
    const key = createPublicKey(pem);
    if (key.asymmetricKeyType !== 'ed25519') throw new Error(`a ${key.asymmetricKeyType} key`);
    return key;
  } catch (err) {
    throw new EdgekitError(`${where}: not an ed25519 public key (${(err as Error).message.split('\n')[0]})`);
  }
}

export function publicKeyOf(privateKey: KeyObject): KeyObject {
  return createPublicKey(privateKey);
}

export function keyIdOf(publicKey: KeyObject): string {
  const raw = publicKey.export({ format: 'jwk' }).x as string;
  return createHash('sha256').update(Buffer.from(raw, 'base64url')).digest('hex');
}

async function readKeyFile(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new EdgekitError(`${path}: cannot read ${what}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}
