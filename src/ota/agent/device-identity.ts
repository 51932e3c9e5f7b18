/**
 * Who the device is to a fleet server: its own ed25519 key pair, made on first start and kept on
 * the data partition (written atomically, mode 0600; updates never touch it), and a device id —
 * the one the flasher wrote into the config partition, or else one derived from the public key.
 * A provisioning token in the config partition pre-authorises the device at its first handshake.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic.js';
import { EdgekitError } from '../../util/errors.js';

export interface DeviceIdentity {
  deviceId: string;
  /** Where the id came from: the config partition, or derived from the key. */
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
    deviceId: fromConfig ?? deviceIdFromKey(key),
    idSource: fromConfig ? 'config' : 'key',
    privateKey: key,
    ...(provisioningToken ? { provisioningToken } : {}),
    created,
  };
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
