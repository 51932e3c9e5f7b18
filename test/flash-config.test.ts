/**
 * Per-device settings in the config partition of a built image: written by writeDeviceConfig,
 * read back with mtools, fsck.vfat, ssh-keygen and wpa_supplicant; `edgekit verify` still passes and
 * no byte outside the partition moves. Templating with a CSV of serials, and the errors users make.
 * The last test boots a configured copy under QEMU and sees the hostname taken from /config.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { builtImage, edgekit, testDir, type BuiltImage } from './helpers/built-images.js';
import { bootImage, freePort, sshRun } from './helpers/qemu-image.js';
import { extractRange } from './helpers/image-bytes.js';
import { expectFsckClean, mtoolsPaths } from './helpers/fat-tools.js';
import { runTool } from './helpers/fs-image-tools.js';
import { sha256OfFile } from '../src/util/hash.js';
import type { ManifestPartition, SignedManifest } from '../src/image/manifest.js';
import { checkSettings, deviceConfigTree, writeDeviceConfig, SETTING_KEYS } from '../src/flash/device-config.js';
import { assignRows, expandSettings, parseSetFlags, readSerialsCsv } from '../src/flash/settings.js';

let img: BuiltImage;
let config: ManifestPartition;
let sshPub: string[];
let n = 0;

/** A sparse copy of the built image for one test to change. */
function copyOfImage(): string {
  const path = join(testDir(), `config-${process.pid}-${n++}.img`);
  execFileSync('cp', ['--sparse=always', img.image, path]);
  return path;
}

/** mtools addresses the partition by byte offset (file@@offset). */
const part = (image: string) => `${image}@@${config.start}`;
function mtype(image: string, name: string): string {
  const r = runTool('mtype', ['-i', part(image), `::/${name}`]);
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

beforeAll(async () => {
  img = await builtImage('minimal', 'qemu-x86_64');
  const m: SignedManifest = JSON.parse(readFileSync(img.manifest, 'utf8'));
  config = m.signed.partitions.find((p) => p.role === 'config')!;
  expect(config).toBeDefined();
  sshPub = [0, 1].map((i) => {
    const key = join(testDir(), `config-ssh-${i}`);
    execFileSync('ssh-keygen', ['-q', '-t', i ? 'rsa' : 'ed25519', '-N', '', '-C', `bench-${i}@example`, '-f', key]);
    return readFileSync(`${key}.pub`, 'utf8').trim();
  });
}, 600_000);

describe('writeDeviceConfig on a built image', () => {
  it('writes one file per setting, readable with mtools, ssh-keygen and wpa_supplicant; README.TXT kept', async () => {
    const image = copyOfImage();
    const readmeBefore = mtype(image, 'README.TXT');
    await writeDeviceConfig(image, {
      hostname: 'bench-7',
      'wifi.ssid': 'shop floor',
      'wifi.psk': 'correct horse',
      'wifi.country': 'DE',
      authorized_keys: sshPub.join('\n'),
      'device-id': 'SN-0042',
      'provisioning-token': 'tok.e30.c2lnbmF0dXJl',
    });
    expect(mtoolsPaths(part(image))).toEqual(['README.TXT', 'authorized_keys', 'device-id', 'hostname', 'provisioning-token', 'wifi.conf']);
    expect(mtype(image, 'README.TXT')).toBe(readmeBefore);
    expect(mtype(image, 'hostname')).toBe('bench-7\n');
    expect(mtype(image, 'device-id')).toBe('SN-0042\n');
    expect(mtype(image, 'provisioning-token')).toBe('tok.e30.c2lnbmF0dXJl\n');

    const dir = testDir();
    const keysFile = join(dir, `authorized_keys-${n}`);
    writeFileSync(keysFile, mtype(image, 'authorized_keys'));
    const fingerprints = execFileSync('ssh-keygen', ['-l', '-f', keysFile], { encoding: 'utf8' });
    expect(fingerprints).toMatch(/bench-0@example \(ED25519\)/);
    expect(fingerprints).toMatch(/bench-1@example \(RSA\)/);

    const wifiFile = join(dir, `wifi-${n}.conf`);
    writeFileSync(wifiFile, mtype(image, 'wifi.conf'));
    // wpa_supplicant parses the file before it gives up on the (missing) interface.
    const wpa = runTool('wpa_supplicant', ['-i', 'edgekit-none0', '-D', 'wext', '-c', wifiFile, '-dd', '-K']);
    const said = wpa.stdout + wpa.stderr;
    expect(said).not.toMatch(/Failed to read or parse configuration|Line \d+:/);
    expect(said).toMatch(/id=0 ssid='shop floor'/);
    expect(said).toMatch(/country='DE'/);
    expect(said).toMatch(/PSK \(ASCII passphrase\)[^\n]*\n[^\n]*63 6f 72 72 65 63 74 20 68 6f 72 73 65/);

    expectFsckClean(extractRange(image, config.start, config.size, join(dir, `config-${n}.fat`)));
  });

  it('leaves every byte outside the config partition as it was, so `edgekit verify` passes', async () => {
    const image = copyOfImage();
    const end = config.start + config.size;
    const size = statSync(img.image).size;
    const before = [await sha256OfFile(img.image, 0, config.start), await sha256OfFile(img.image, end, size - end)];
    const insideBefore = await sha256OfFile(img.image, config.start, config.size);
    await writeDeviceConfig(image, { hostname: 'bench-7', 'provisioning-token': 'secret-1' });
    expect([await sha256OfFile(image, 0, config.start), await sha256OfFile(image, end, size - end)]).toEqual(before);
    expect(await sha256OfFile(image, config.start, config.size)).not.toBe(insideBefore);
    const v = await edgekit(['verify', image, '--pubkey', img.pub]);
    expect(v.code, v.stdout + v.stderr).toBe(0);
  });

  it('is deterministic, and a rewrite replaces the previous settings (no old token left behind)', async () => {
    const a = copyOfImage();
    const b = copyOfImage();
    const settings = { hostname: 'gw-1', 'device-id': 'one', 'provisioning-token': 'first-token-AAAA' };
    await writeDeviceConfig(a, settings);
    await writeDeviceConfig(b, settings);
    expect(await sha256OfFile(a)).toBe(await sha256OfFile(b));

    await writeDeviceConfig(b, { hostname: 'gw-2' });
    expect(mtoolsPaths(part(b))).toEqual(['README.TXT', 'hostname']);
    expect(mtype(b, 'hostname')).toBe('gw-2\n');
    const configBytes = readFileSync(b).subarray(config.start, config.start + config.size);
    expect(configBytes.includes(Buffer.from('first-token-AAAA'))).toBe(false);
    // Different settings give a different volume serial (minfo reads it from the boot sector).
    const serial = (f: string) => /serial number: ([0-9A-F]+)/i.exec(runTool('minfo', ['-i', part(f), '::']).stdout)?.[1];
    expect(serial(a)).toBeDefined();
    expect(serial(a)).not.toBe(serial(b));
  });

  it('refuses a file that is not an edgekit image, or one cut short inside the config partition', async () => {
    const junk = join(testDir(), 'not-an-image.img');
    writeFileSync(junk, Buffer.alloc(2 << 20));
    await expect(writeDeviceConfig(junk, { hostname: 'x' })).rejects.toThrow(/not-an-image\.img: no edgekit manifest/);

    const short = copyOfImage();
    execFileSync('truncate', ['-s', String(config.start + 4096), short]);
    await expect(writeDeviceConfig(short, { hostname: 'x' })).rejects.toThrow(/too short for its config partition/);
  });
});

describe('settings checks', () => {
  it('an unknown key is named, with the list of known keys', () => {
    expect(() => checkSettings({ hostnme: 'x' })).toThrow(/unknown setting "hostnme"; known settings: hostname, wifi\.ssid/);
    expect(() => parseSetFlags(['wifi.password=x'])).toThrow(/--set wifi\.password: unknown setting.*wifi\.psk/);
  });

  it.each([
    ['hostname', '-gw'],
    ['hostname', 'gw_1'],
    ['hostname', 'a'.repeat(64)],
    ['hostname', 'gw.example.com'],
    ['wifi.psk', 'short'],
    ['wifi.country', 'de'],
    ['device-id', 'has space'],
    ['provisioning-token', 'two words'],
  ])('%s=%s is refused', (key, value) => {
    const s: Record<string, string> = { [key]: value };
    if (key.startsWith('wifi.') && key !== 'wifi.ssid') s['wifi.ssid'] = 'net';
    expect(() => checkSettings(s)).toThrow(new RegExp(`${key.replace('.', '\\.')}=.* is not valid: expected`));
  });

  it('authorized_keys must hold OpenSSH public keys whose data matches their type', () => {
    expect(() => checkSettings({ authorized_keys: sshPub[0] })).not.toThrow();
    expect(() => checkSettings({ authorized_keys: 'ssh-ed25519 notbase64!! me@x' })).toThrow(/not an OpenSSH public key: the key data is not base64/);
    const [, blob] = sshPub[1].split(' ');
    expect(() => checkSettings({ authorized_keys: `ssh-ed25519 ${blob}` })).toThrow(/does not hold a ssh-ed25519 key/);
    expect(() => checkSettings({ authorized_keys: '-----BEGIN OPENSSH PRIVATE KEY-----' })).toThrow(/unknown key type/);
  });

  it('wifi.psk without wifi.ssid is refused; an open network gets key_mgmt=NONE', () => {
    expect(() => checkSettings({ 'wifi.psk': 'password123' })).toThrow(/wifi\.psk is set but wifi\.ssid is not/);
    const conf = deviceConfigTree({ 'wifi.ssid': 'cafe' }).get('wifi.conf');
    expect(conf?.type === 'file' && conf.content.kind === 'buffer' && conf.content.data.toString()).toMatch(/key_mgmt=NONE/);
  });

  it('every documented key is accepted by checkSettings with a plausible value', () => {
    const ok: Record<string, string> = {
      hostname: 'gw-1',
      'wifi.ssid': 'x',
      'wifi.psk': 'f'.repeat(64),
      'wifi.country': 'FR',
      authorized_keys: sshPub.join('\n'),
      'device-id': 'a:b',
      'provisioning-token': 't',
    };
    expect(Object.keys(ok).sort()).toEqual(Object.keys(SETTING_KEYS).sort());
    expect(() => checkSettings(ok)).not.toThrow();
  });
});

describe('templating with a CSV of serials', () => {
  function csv(name: string, text: string): string {
    const p = join(testDir(), name);
    writeFileSync(p, text);
    return p;
  }

  it('fills {column} placeholders per row and writes each copy with its own settings', async () => {
    const file = csv('serials.csv', '# bench batch 12\nserial,token\r\n0001,tok-a\r\n\r\n"0002","tok-""b"""\r\n');
    const rows = readSerialsCsv(file);
    expect(rows).toEqual([
      { serial: '0001', token: 'tok-a' },
      { serial: '0002', token: 'tok-"b"' },
    ]);
    expect(expandSettings(parseSetFlags(['provisioning-token={token}']), rows[1])).toEqual({ 'provisioning-token': 'tok-"b"' });
    const targets = [copyOfImage(), copyOfImage()];
    const good = parseSetFlags(['hostname=gw-{serial}', 'device-id=SN{serial}', 'wifi.ssid=shop {{1}}']);
    const assigned = assignRows(rows, targets.map((path) => ({ path })));
    for (const [i, t] of targets.entries()) await writeDeviceConfig(t, expandSettings(good, assigned[i]));
    expect(mtype(targets[0], 'hostname')).toBe('gw-0001\n');
    expect(mtype(targets[1], 'hostname')).toBe('gw-0002\n');
    expect(mtype(targets[1], 'device-id')).toBe('SN0002\n');
    expect(mtype(targets[1], 'wifi.conf')).toMatch(/ssid="shop \{1\}"/);
  });

  it('a placeholder the row has no value for names the column, the file and the line', () => {
    const file = csv('serials-gap.csv', 'serial,token\nA1,\n');
    const rows = readSerialsCsv(file);
    expect(() => expandSettings(parseSetFlags(['provisioning-token={token}']), rows[0])).toThrow(/serials-gap\.csv:2: --set provisioning-token needs \{token\}/);
    expect(() => expandSettings(parseSetFlags(['hostname=gw-{slot}']), rows[0])).toThrow(/serials-gap\.csv:2: .*no value for "slot"/);
    expect(() => expandSettings(parseSetFlags(['hostname=gw-{serial}']))).toThrow(/--set hostname uses \{serial\}: give --serials <file\.csv> with a "serial" column/);
  });

  it('malformed CSV rows are reported as file:line', () => {
    expect(() => readSerialsCsv(csv('bad-count.csv', 'serial,token\nA1,t1\nA2\n'))).toThrow(/bad-count\.csv:3: 1 fields, but the header names 2/);
    expect(() => readSerialsCsv(csv('bad-quote.csv', 'serial\n"A1\n'))).toThrow(/bad-quote\.csv:2: a quoted field is not closed/);
    expect(() => readSerialsCsv(csv('bad-inner.csv', 'serial\nA"1\n'))).toThrow(/bad-inner\.csv:2: a quote inside an unquoted field/);
    expect(() => readSerialsCsv(csv('bad-header.csv', 'serial,serial\n1,2\n'))).toThrow(/bad-header\.csv:1: column "serial" appears twice/);
    expect(() => readSerialsCsv(csv('empty.csv', '\n'))).toThrow(/empty\.csv: empty/);
    expect(() => readSerialsCsv(join(testDir(), 'missing.csv'))).toThrow(/missing\.csv: cannot read the serials file \(ENOENT\)/);
  });

  it('bad --set flags: no "=", a stray brace, a key given twice', () => {
    expect(() => parseSetFlags(['hostname'])).toThrow(/--set "hostname": expected key=value/);
    expect(() => parseSetFlags(['hostname=gw-{serial'])).toThrow(/--set hostname: "\{" at character 4 is not a \{column\} placeholder/);
    expect(() => parseSetFlags(['hostname=a', 'hostname=b'])).toThrow(/--set hostname: given twice/);
  });

  it('rows go to targets in order, or by a port column matching the by-path name', () => {
    const rows = readSerialsCsv(csv('ordered.csv', 'serial\n1\n2\n3\n'));
    expect(assignRows(rows, [{ path: 'a' }, { path: 'b' }], { first: 1 }).map((r) => r.serial)).toEqual(['2', '3']);
    expect(() => assignRows(rows, [{ path: 'a' }, { path: 'b' }], { first: 2 })).toThrow(/2 target\(s\) from row 3 need 4 row\(s\), the file has 3/);

    const byPort = readSerialsCsv(csv('ports.csv', 'port,serial\nusb-0:1.1:1.0,11\nusb-0:1.2:1.0,12\n'));
    const dev = (p: string) => `/dev/disk/by-path/pci-0000:00:14.0-${p}-scsi-0:0:0:0`;
    const got = assignRows(byPort, [
      { path: '/dev/sdc', byPath: dev('usb-0:1.2:1.0') },
      { path: '/dev/sdb', byPath: dev('usb-0:1.1:1.0') },
    ]);
    expect(got.map((r) => r.serial)).toEqual(['12', '11']);
    expect(() => assignRows(byPort, [{ path: '/dev/sdd', byPath: dev('usb-0:1.3:1.0') }])).toThrow(/\/dev\/sdd: no serials row has a port matching/);
    expect(() => assignRows(byPort, [{ path: 'card.img' }])).toThrow(/card\.img: the serials file matches rows by port/);
  });
});

describe('the device reads /config at boot', () => {
  it('a copy with hostname=bench-7 in its config partition boots with that hostname', async () => {
    const image = copyOfImage();
    await writeDeviceConfig(image, { hostname: 'bench-7' });
    const session = await bootImage(image, 'qemu-x86_64');
    try {
      // Up to the line's end: a chunk boundary could otherwise cut the name short.
      const line = await session.waitFor(/edgekit: hostname [^\n]*\n/, 180_000);
      expect(line.trim()).toBe('edgekit: hostname bench-7');
      await session.waitFor(/edgekit: minimal is up/, 60_000);
    } finally {
      await session.stop();
    }
  }, 300_000);

  it('gateway (read-only verity root): a key from /config lets root in over ssh; /config is root-only', async () => {
    const gw = await builtImage('gateway', 'qemu-x86_64');
    const image = join(testDir(), `config-gateway-${n++}.img`);
    execFileSync('cp', ['--sparse=always', gw.image, image]);
    const key = join(testDir(), 'config-ssh-0');
    await writeDeviceConfig(image, { hostname: 'bench-9', authorized_keys: sshPub[0], 'provisioning-token': 'tok-9' });
    const port = await freePort();
    const session = await bootImage(image, 'qemu-x86_64', { forwards: [{ hostPort: port, guestPort: 22 }] });
    try {
      await session.waitFor(/edgekit: gateway is up/, 180_000);
      const r = await sshRun(port, key, 'root', 'hostname; cat /root/.ssh/authorized_keys; ls -l /config/provisioning-token');
      expect(r.code, r.stderr).toBe(0);
      const [host, authorized, listing] = r.stdout.split('\n');
      expect(host).toBe('bench-9');
      expect(authorized).toBe(sshPub[0]);
      expect(listing).toMatch(/^-rw------- .* root .*provisioning-token$/);
    } finally {
      await session.stop();
    }
  }, 600_000);
});
