/**
 * Debian trixie arm64 packages the Raspberry Pi boot tests run: U-Boot (u-boot-rpi), the Pi
 * firmware (raspi-firmware), the kernel (linux-image-arm64's image package) and busybox-static
 * for a marker initramfs. Fetched once with apt-get from the host's own Debian mirror (read from
 * its apt sources) into the edgekit cache, outside the repository; extracted there for reuse.
 * This is test setup only: the image builder fetches packages itself (src/packages).
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { cacheDir } from '../../src/util/cache.js';

export interface RpiDevFiles {
  ubootBin: string; // rpi_arm64 build: Pi 3, 4, 5, Zero 2 W, CM4
  firmwareDir: string; // raspi-firmware's usr/lib/raspi-firmware
  kernel: string; // the arm64 Image (vmlinuz)
  dtbDir: string; // .../usr/lib/linux-image-<version>/ (holds broadcom/)
  busybox: string;
}

const SUITE = 'trixie';
const PACKAGES = ['u-boot-rpi', 'raspi-firmware', 'busybox-static'];

function run(cmd: string, args: string[], cwd?: string): { ok: boolean; out: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20, env: { ...process.env, LC_ALL: 'C' } });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

/** The first plain Debian archive URI in the host's apt sources (not the security archive). */
export function hostDebianMirror(): string | undefined {
  const texts: string[] = [];
  for (const dir of ['/etc/apt/sources.list.d']) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).sort()) if (/\.(sources|list)$/.test(f)) texts.push(readFileSync(join(dir, f), 'utf8'));
  }
  if (existsSync('/etc/apt/sources.list')) texts.push(readFileSync('/etc/apt/sources.list', 'utf8'));
  for (const text of texts) {
    for (const m of text.matchAll(/(?:^URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+)/gm)) {
      const uri = m[1].replace(/\/$/, '');
      if (/\/debian$/.test(uri)) return uri;
    }
  }
  return undefined;
}

function find(dir: string, re: RegExp): string | undefined {
  if (!existsSync(dir)) return undefined;
  return readdirSync(dir).filter((f) => re.test(f)).sort()[0];
}

function located(base: string): RpiDevFiles | undefined {
  const x = join(base, 'x');
  const bootDir = join(x, 'kernel', 'boot');
  const vmlinuz = find(bootDir, /^vmlinuz-/);
  const modDir = find(join(x, 'kernel', 'usr', 'lib'), /^linux-image-/);
  const files = {
    ubootBin: join(x, 'u-boot-rpi', 'usr/lib/u-boot/rpi_arm64/u-boot.bin'),
    firmwareDir: join(x, 'raspi-firmware', 'usr/lib/raspi-firmware'),
    kernel: vmlinuz ? join(bootDir, vmlinuz) : '',
    dtbDir: modDir ? join(x, 'kernel', 'usr', 'lib', modDir) : '',
    busybox: join(x, 'busybox-static', 'usr/bin/busybox'),
  };
  return Object.values(files).every((p) => p && existsSync(p)) ? files : undefined;
}

/**
 * The extracted packages, downloading them first when the cache lacks them.
 * Returns a reason string instead when they cannot be had (no apt-get, no mirror, no network).
 */
export function ensureRpiDevFiles(): RpiDevFiles | string {
  const base = cacheDir('dev', `rpi-${SUITE}-arm64`);
  const ready = located(base);
  if (ready) return ready;
  const mirror = hostDebianMirror();
  if (!mirror) return 'no Debian mirror in the host apt sources';
  if (!run('apt-get', ['--version']).ok) return 'apt-get not found';

  const apt = join(base, 'apt');
  for (const d of ['etc/preferences.d', 'etc/sources.list.d', 'state/lists/partial', 'cache/archives/partial']) mkdirSync(join(apt, d), { recursive: true });
  writeFileSync(
    join(apt, 'etc/sources.list'),
    `deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror} ${SUITE} main non-free-firmware\n`,
  );
  const o = [
    '-o', `Dir::Etc=${join(apt, 'etc')}`,
    '-o', `Dir::State=${join(apt, 'state')}`,
    '-o', `Dir::Cache=${join(apt, 'cache')}`,
    '-o', 'APT::Architecture=arm64',
    '-o', 'APT::Architectures=arm64',
    '-o', 'APT::Sandbox::User=root',
    '-o', 'Debug::NoLocking=1',
  ];
  const update = run('apt-get', [...o, '-q', 'update']);
  if (!update.ok) return `apt-get update (${SUITE} arm64) failed: ${update.out.trim().split('\n').pop()}`;
  // linux-image-arm64 is a metapackage: download the versioned image package it depends on.
  const show = run('apt-cache', [...o, 'depends', 'linux-image-arm64']);
  const image = /Depends:\s*(linux-image-[0-9][^\s]*-arm64)\b/.exec(show.out)?.[1];
  if (!image) return `cannot resolve linux-image-arm64 in ${SUITE}: ${show.out.trim().slice(0, 200)}`;

  const dl = join(base, 'dl');
  mkdirSync(dl, { recursive: true });
  const get = run('apt-get', [...o, '-q', 'download', ...PACKAGES, image], dl);
  if (!get.ok) return `apt-get download failed: ${get.out.trim().split('\n').pop()}`;
  const debs = readdirSync(dl);
  const x = join(base, 'x');
  for (const pkg of PACKAGES) {
    const deb = debs.find((f) => f.startsWith(`${pkg}_`));
    if (!deb) return `${pkg} was not downloaded`;
    const dest = join(x, pkg);
    mkdirSync(dest, { recursive: true });
    const r = run('dpkg-deb', ['-x', join(dl, deb), dest]);
    if (!r.ok) return `dpkg-deb -x ${deb}: ${r.out}`;
  }
  // Only the kernel Image and the Broadcom device trees: the modules are not needed here.
  const kdeb = debs.find((f) => f.startsWith(`${image}_`));
  if (!kdeb) return `${image} was not downloaded`;
  const kdest = join(x, 'kernel');
  mkdirSync(kdest, { recursive: true });
  const r = run('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./boot/vmlinuz-*" "./usr/lib/linux-image-*/broadcom/*"', 'sh', join(dl, kdeb), kdest]);
  if (!r.ok) return `extracting ${kdeb}: ${r.out}`;
  rmSync(dl, { recursive: true, force: true });
  return located(base) ?? `packages extracted under ${x} but expected files are missing`;
}
