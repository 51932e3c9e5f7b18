/**
 * Who the device is to a fleet server: its own ed25519 key pair, made on first start and kept on
 * the data partition (written atomically, mode 0600; updates never touch it), and a device id —
 * the one the flasher wrote into the config partition, or else one derived from the first public
 * key and kept beside the key (so the id survives a key rotation).
 * A provisioning token in the config partition pre-authorises the device at its first handshake.
 *
 * Key rotation keeps the next key in `<keyFile>.next` until the server has it: made (atomically)
 * before the server is asked, renamed over the key file only after the server answered. A power cut
 * anywhere in between leaves either the old key in force, or a `.next` the server may already
 * hold — the agent simply asks again (the server answers 'rotated' once the new key is in place).
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, readFile, rename, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../../util/atomic.js';
import { EdgekitError } from '../../util/errors.js';

export interface DeviceIdentity {
  deviceId: string;
  /** Where the id came from: the config partition, or derived from the device's first key. */
  idSource: 'config' | 'key';
  privateKey: KeyObject;
  /** The provisioning token from the config partition, if the flasher wrote one. */
  provisioningToken?: string;
  /** True when the key pair was made by this call (first start). */
  created: boolean;
}

/** The same rules the flasher checks (src/flash/device-config.ts) and the server accepts. */
const DEVICE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const TOKEN = /^[!-~]{1,4096}$/;

/** A stable id for a device whose config partition names none: from its public key. */
export function deviceIdFromKey(key: KeyObject): string {
  const spki = createPublicKey(key).export({ type: 'spki', format: 'der' });
  return `ed25519-${createHash('sha256').update(spki).digest('hex').slice(0, 32)}`;
}

export async function loadDeviceIdentity(o: { keyFile: string; configDir: string }): Promise<DeviceIdentity> {
  const { key, created } = await loadOrCreateKey(o.keyFile);
  const fromConfig = await readSetting(o.configDir, 'device-id', DEVICE_ID);
  const provisioningToken = await readSetting(o.configDir, 'provisioning-token', TOKEN);
  return {
    deviceId: fromConfig ?? (await keptDeviceId(o.keyFile, key)),
    idSource: fromConfig ? 'config' : 'key',
    privateKey: key,
    ...(provisioningToken ? { provisioningToken } : {}),
    created,
  };
}

/** The file holding the id derived from the device's first key, beside the key. */
export function deviceIdFile(keyFile: string): string {
  return join(dirname(keyFile), 'device-id');
}

/** The derived id, kept from the first key on (written now when missing: the key has not rotated yet). */
async function keptDeviceId(keyFile: string, key: KeyObject): Promise<string> {
  const file = deviceIdFile(keyFile);
  const kept = (await readFile(file, 'utf8').catch(() => ''))?.trim();
  if (kept && DEVICE_ID.test(kept)) return kept;
  const id = deviceIdFromKey(key);
  await writeFileAtomic(file, `${id}\n`, 0o600);
  return id;
}

/** The key a rotation is under way to, if one is (`<keyFile>.next`). */
export async function pendingKey(keyFile: string): Promise<KeyObject | undefined> {
  const pem = await readFile(`${keyFile}.next`, 'utf8').catch(() => undefined);
  if (pem === undefined) return undefined;
  try {
    const key = createPrivateKey(pem);
    if (key.asymmetricKeyType === 'ed25519') return key;
  } catch {
    // Torn or damaged: the server cannot hold a key the device never presented whole; start over.
  }
  return undefined;
}

/** Starts a rotation: the pending key, or a new one written to `<keyFile>.next` (atomically, 0600). */
export async function prepareKeyRotation(keyFile: string): Promise<KeyObject> {
  const pending = await pendingKey(keyFile);
  if (pending) return pending;
  const { privateKey } = generateKeyPairSync('ed25519');
  await writeFileAtomic(`${keyFile}.next`, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  return privateKey;
}

/** Ends a rotation the server has confirmed: the next key becomes the key. */
export async function commitKeyRotation(keyFile: string): Promise<void> {
  await rename(`${keyFile}.next`, keyFile);
  await fsyncDir(dirname(keyFile));
}

/** Age of the device's key in days (from the key file's time), or undefined when there is none. */
export async function keyAgeDays(keyFile: string, now = Date.now()): Promise<number | undefined> {
  const st = await stat(keyFile).catch(() => undefined);
  return st ? (now - st.mtimeMs) / 86_400_000 : undefined;
}

async function loadOrCreateKey(file: string): Promise<{ key: KeyObject; created: boolean }> {
  const pem = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new EdgekitError(`${file}: cannot read the device key: ${err.code ?? err.message}`);
  });
  if (pem !== undefined) {
    let key: KeyObject;
    try {
      key = createPrivateKey(pem);
    } catch {
      // Not replaced by a new one: the server knows this device by that key, a new one would lock it out.
      throw new EdgekitError(`${file}: not a private key (PKCS#8 PEM); restore it, or remove it and have an operator re-admit the device`);
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new EdgekitError(`${file}: a ${key.asymmetricKeyType} key, the fleet protocol needs ed25519`);
    return { key, created: false };
  }
  const { privateKey } = generateKeyPairSync('ed25519');
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, 0o600);
  return { key: privateKey, created: true };
}

/** One line from the config partition; undefined when the file is absent or empty. */
async function readSetting(dir: string, name: string, valid: RegExp): Promise<string | undefined> {
  const file = join(dir, name);
  const text = await readFile(file, 'utf8').catch(() => undefined);
  const value = text?.replace(/\r?\n$/, '').trim();
  if (!value) return undefined;
  if (!valid.test(value)) throw new EdgekitError(`${file}: not a valid ${name} (rewrite it with edgekit flash --set ${name}=...)`);
  return value;
}
