/**
 * Per-device settings, written at flash time into the image's config partition (FAT, unsigned).
 *
 * Every flashed card of one image is byte-identical except this partition, so the image itself
 * (whose files are public) never holds a hostname, a wifi password or a fleet token. One file per
 * setting, read at boot by rc.sysinit (src/tree/system.ts) from /config, never executed:
 *
 *   setting key(s)                        file                 content
 *   hostname                              hostname             the name, one line
 *   wifi.ssid, wifi.psk, wifi.country     wifi.conf            a wpa_supplicant network block
 *   authorized_keys                       authorized_keys      OpenSSH public keys (one a line), added to root's at boot
 *   device-id                             device-id            the device identity, one line
 *   provisioning-token                    provisioning-token   a short-lived token for the fleet server, one line
 *
 * The README.TXT the builder put there is kept. Rewriting touches only the config partition's
 * byte range, found through the manifest embedded in the target, so the signed payloads and the
 * partition table stay as they were.
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdtemp, open, rm, stat, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFat } from '../fs/fat.js';
import { FatReader } from '../fs/fat-reader.js';
import { readEmbeddedManifest, type ManifestPartition } from '../image/manifest.js';
import { Tree } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';

export type DeviceSettings = Record<string, string>;

/** Keys `--set` accepts, with what each must look like (for error messages and `--help`). */
export const SETTING_KEYS: Record<string, string> = {
  hostname: 'an RFC 1123 host label: 1-63 letters, digits or hyphens, not starting or ending with a hyphen',
  'wifi.ssid': 'the network name: 1-32 bytes',
  'wifi.psk': 'the passphrase (8-63 printable ASCII characters) or 64 hex digits',
  'wifi.country': 'a two-letter ISO 3166 country code (regulatory domain)',
  authorized_keys: 'OpenSSH public key lines (ssh-ed25519 AAAA... comment), several separated by newlines',
  'device-id': '1-128 letters, digits or . _ : -',
  'provisioning-token': '1-4096 printable ASCII characters without spaces',
};

/** The files this module writes; any other name in the partition is dropped on rewrite except README.TXT. */
export const CONFIG_FILES = ['hostname', 'wifi.conf', 'authorized_keys', 'device-id', 'provisioning-token'] as const;
const README = 'README.TXT';
const CONFIG_LABEL = 'CONFIG';

const HOST_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
const DEVICE_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const TOKEN = /^[!-~]{1,4096}$/;
const PASSPHRASE = /^[ -~]{8,63}$/;
const RAW_PSK = /^[0-9A-Fa-f]{64}$/;
const COUNTRY = /^[A-Z]{2}$/;
/** Key types OpenSSH writes in .pub files (ssh-keygen -t ...). */
const SSH_KEY_TYPES = new Set([
  'ssh-ed25519',
  'ssh-rsa',
  'ssh-dss',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'sk-ssh-ed25519@openssh.com',
  'sk-ecdsa-sha2-nistp256@openssh.com',
]);

/** Throws an EdgekitError naming the key and listing the known ones if `key` is not a setting. */
export function checkSettingKey(key: string, where = '--set'): void {
  if (!Object.hasOwn(SETTING_KEYS, key)) {
    throw new EdgekitError(`${where}: unknown setting "${key}"; known settings: ${Object.keys(SETTING_KEYS).join(', ')}`);
  }
}

/** Checks every key and value; `where` prefixes the messages (a CSV line, a target). */
export function checkSettings(settings: DeviceSettings, where = '--set'): void {
  for (const [key, value] of Object.entries(settings)) {
    checkSettingKey(key, where);
    const bad = (why = SETTING_KEYS[key]) => new EdgekitError(`${where}: ${key}=${JSON.stringify(value)} is not valid: expected ${why}`);
    switch (key) {
      case 'hostname':
        if (!HOST_LABEL.test(value)) throw bad();
        break;
      case 'wifi.ssid': {
        const n = Buffer.byteLength(value);
        if (n < 1 || n > 32 || /[\0-\x1f\x7f]/.test(value)) throw bad();
        break;
      }
      case 'wifi.psk':
        if (!PASSPHRASE.test(value) && !RAW_PSK.test(value)) throw bad();
        break;
      case 'wifi.country':
        if (!COUNTRY.test(value)) throw bad();
        break;
      case 'authorized_keys': {
        const lines = keyLines(value);
        if (lines.length === 0) throw bad();
        for (const line of lines) {
          const why = sshKeyProblem(line);
          if (why) throw new EdgekitError(`${where}: authorized_keys line "${clip(line)}" is not an OpenSSH public key: ${why}`);
        }
        break;
      }
      case 'device-id':
        if (!DEVICE_ID.test(value)) throw bad();
        break;
      case 'provisioning-token':
        if (!TOKEN.test(value)) throw bad();
        break;
    }
  }
  for (const dependent of ['wifi.psk', 'wifi.country']) {
    if (settings[dependent] !== undefined && settings['wifi.ssid'] === undefined) {
      throw new EdgekitError(`${where}: ${dependent} is set but wifi.ssid is not`);
    }
  }
}

function keyLines(value: string): string[] {
  return value
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

/**
 * Why `line` is not `<type> <base64 blob> [comment]`, or undefined if it is. The blob must decode
 * and start with its own type name (the SSH wire format), which catches truncated or pasted-wrong keys.
 */
function sshKeyProblem(line: string): string | undefined {
  const [type, blob] = line.split(/\s+/);
  if (!SSH_KEY_TYPES.has(type)) return `unknown key type "${clip(type, 40)}"`;
  if (!blob || !/^[A-Za-z0-9+/]+={0,2}$/.test(blob) || blob.length % 4 !== 0) return 'the key data is not base64';
  const raw = Buffer.from(blob, 'base64');
  const len = raw.length >= 4 ? raw.readUInt32BE(0) : -1;
  if (len < 0 || 4 + len > raw.length || raw.subarray(4, 4 + len).toString('latin1') !== type) {
    return `the key data does not hold a ${type} key`;
  }
  return undefined;
}

function clip(s: string, n = 60): string {
  return s.length > n ? `${s.slice(0, n)}...` : s;
}

/** A wpa_supplicant configuration: optional country, one network. */
export function wpaSupplicantConf(settings: DeviceSettings): string {
  const ssid = settings['wifi.ssid'];
  const psk = settings['wifi.psk'];
  const lines = ['# written by edgekit flash from wifi.* settings', 'ctrl_interface=/run/wpa_supplicant'];
  if (settings['wifi.country']) lines.push(`country=${settings['wifi.country']}`);
  lines.push('network={', `\tssid=${wpaString(ssid)}`);
  if (psk === undefined) lines.push('\tkey_mgmt=NONE');
  // A 64-hex-digit psk is the raw key and goes unquoted; a passphrase is quoted.
  else lines.push(`\tpsk=${RAW_PSK.test(psk) ? psk.toLowerCase() : `"${psk}"`}`);
  lines.push('}', '');
  return lines.join('\n');
}

/** wpa_supplicant takes "quoted" text, or bare hex for anything that would not survive quoting. */
function wpaString(s: string): string {
  return /^[ -~]*$/.test(s) && !s.includes('"') ? `"${s}"` : Buffer.from(s).toString('hex');
}

/**
 * The files of the config partition for `settings` (checked first). `readme` is the README.TXT
 * to keep, if any.
 */
export function deviceConfigTree(settings: DeviceSettings, readme?: Buffer): Tree {
  checkSettings(settings);
  const tree = new Tree();
  if (readme) tree.file(README, readme);
  if (settings.hostname !== undefined) tree.file('hostname', `${settings.hostname}\n`);
  if (settings['wifi.ssid'] !== undefined) tree.file('wifi.conf', wpaSupplicantConf(settings));
  if (settings.authorized_keys !== undefined) tree.file('authorized_keys', keyLines(settings.authorized_keys).join('\n') + '\n');
  if (settings['device-id'] !== undefined) tree.file('device-id', `${settings['device-id']}\n`);
  if (settings['provisioning-token'] !== undefined) tree.file('provisioning-token', `${settings['provisioning-token']}\n`);
  return tree;
}

/** FAT volume serial from the settings: the same settings give the same bytes, different cards differ. */
export function configVolumeId(settings: DeviceSettings): number {
  const h = createHash('sha256').update('edgekit-config\0');
  for (const key of Object.keys(settings).sort()) h.update(`${key}\0${settings[key]}\0`);
  return h.digest().readUInt32LE(0);
}

/**
 * Rewrites the config partition of a flashed target (an image file or a block device) with
 * `settings`. Only bytes inside the partition are written, and only those that differ, so a
 * sparse image file stays sparse and nothing signed is touched.
 */
export async function writeDeviceConfig(target: string, settings: DeviceSettings): Promise<void> {
  checkSettings(settings, target);
  const info = await stat(target).catch((err: NodeJS.ErrnoException) => {
    throw new EdgekitError(`${target}: cannot open (${err.code ?? err.message})`);
  });
  const blockDevice = info.isBlockDevice();
  // O_EXCL on a block device fails while the kernel has it mounted (Linux), so a mounted card is refused.
  const flags = fsConstants.O_RDWR | (blockDevice ? fsConstants.O_EXCL : 0);
  const fh = await open(target, flags).catch((err: NodeJS.ErrnoException) => {
    const why = err.code === 'EBUSY' ? 'it is in use (mounted?)' : (err.code ?? err.message);
    throw new EdgekitError(`${target}: cannot open for writing: ${why}`);
  });
  const work = await mkdtemp(join(tmpdir(), 'edgekit-config-'));
  try {
    const doc = await readEmbeddedManifest(fh, target);
    const part = configPartition(doc.signed.partitions, target);
    if (!blockDevice && info.size < part.start + part.size) {
      throw new EdgekitError(`${target}: ${info.size} bytes, too short for its config partition (ends at byte ${part.start + part.size})`);
    }
    const readme = await existingReadme(target, part.start);
    const fatPath = join(work, 'config.fat');
    await writeFat(deviceConfigTree(settings, readme), fatPath, {
      size: part.size,
      label: CONFIG_LABEL,
      volumeId: configVolumeId(settings),
      mtime: doc.signed.sourceDateEpoch,
      partitionOffset: part.start,
    });
    await copyChangedBlocks(fatPath, fh, part.start, part.size, target);
    await fh.sync();
  } finally {
    await fh.close();
    await rm(work, { recursive: true, force: true });
  }
}

function configPartition(partitions: ManifestPartition[], target: string): ManifestPartition {
  const part = partitions.find((p) => p.role === 'config');
  if (!part) throw new EdgekitError(`${target}: the image has no config partition (its board layout has none)`);
  // The manifest is read before its signature is checked here, so refuse anything that would reach signed bytes.
  if (part.signed) throw new EdgekitError(`${target}: the manifest marks the config partition as signed; refusing to write it`);
  if (part.start % 512 !== 0 || part.size % 512 !== 0 || part.size <= 0) {
    throw new EdgekitError(`${target}: config partition at byte ${part.start}, ${part.size} bytes, is not sector-aligned`);
  }
  return part;
}

/** The README.TXT already in the partition, if the partition holds a readable FAT with one. */
async function existingReadme(target: string, offset: number): Promise<Buffer | undefined> {
  let reader: FatReader | undefined;
  try {
    reader = await FatReader.open(target, offset);
    return await reader.readFile(README);
  } catch {
    return undefined; // a wiped or never-written partition: nothing to keep
  } finally {
    await reader?.close();
  }
}

const CHUNK = 1 << 16;

/** Makes `[start, start+size)` of `fh` equal to the file at `srcPath`, writing only chunks that differ. */
async function copyChangedBlocks(srcPath: string, fh: FileHandle, start: number, size: number, target: string): Promise<void> {
  const src = await open(srcPath, 'r');
  const want = Buffer.alloc(CHUNK);
  const have = Buffer.alloc(CHUNK);
  try {
    for (let pos = 0; pos < size; pos += CHUNK) {
      const n = Math.min(CHUNK, size - pos);
      await readFully(src, want, n, pos, srcPath);
      await readFully(fh, have, n, start + pos, target);
      if (want.subarray(0, n).equals(have.subarray(0, n))) continue;
      let done = 0;
      while (done < n) {
        const { bytesWritten } = await fh.write(want, done, n - done, start + pos + done);
        if (bytesWritten === 0) throw new EdgekitError(`${target}: short write at byte ${start + pos + done}`);
        done += bytesWritten;
      }
    }
  } finally {
    await src.close();
  }
}

async function readFully(fh: FileHandle, buf: Buffer, n: number, pos: number, what: string): Promise<void> {
  let done = 0;
  while (done < n) {
    const { bytesRead } = await fh.read(buf, done, n - done, pos + done);
    if (bytesRead === 0) throw new EdgekitError(`${what}: ends at byte ${pos + done}, inside the config partition`);
    done += bytesRead;
  }
}

// The templating half of `--set`/`--serials` lives in settings.ts; re-exported so the flasher finds it here too.
export { parseSetFlags, readSerialsCsv, expandSettings, assignRows, rowOrigin, type SettingTemplates, type SerialsRow, type RowTarget } from './settings.js';
