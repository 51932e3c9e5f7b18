/**
 * Images boot from the disk image, through UEFI firmware and systemd-boot, to a marker on the
 * serial console (software emulation: one QEMU at a time, images shared with the other tests).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { builtImage, edgekit, REPO, testDir } from './helpers/built-images.js';
import { bootImage, freePort, sshRun } from './helpers/qemu-image.js';
import { flipByte, sh } from './helpers/image-bytes.js';
import type { SignedManifest } from '../src/image/manifest.js';

describe('minimal.yml boots', () => {
  it('on qemu-x86_64 through OVMF and systemd-boot (edgekit run --expect)', async () => {
    const img = await builtImage('minimal', 'qemu-x86_64', ['--zstd']);
    const r = await edgekit(['run', img.image, '--expect', 'edgekit: minimal is up', '--timeout', '180']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/edgekit: edgekit minimal 1\.0, slot a/);
  }, 240_000);

  it('edgekit run fails with a clear line when the marker does not come in time', async () => {
    const img = await builtImage('minimal', 'qemu-x86_64', ['--zstd']);
    const r = await edgekit(['run', img.image, '--expect', 'this never shows', '--timeout', '5']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/^edgekit: timed out after 5 s .*this never shows/);
  }, 60_000);

  it('on qemu-arm64 through AAVMF and systemd-boot', async () => {
    const img = await builtImage('minimal', 'qemu-arm64');
    const r = await edgekit(['run', img.image, '--expect', 'edgekit: minimal is up', '--timeout', '240']);
    expect(r.code, r.stderr).toBe(0);
  }, 600_000);
});

describe('gateway.yml on qemu-x86_64', () => {
  /** gateway.yml with a key made by this test, so the test can log in. */
  async function gatewayWithTestKey() {
    const dir = testDir();
    const sshKey = join(dir, 'id_ed25519');
    try {
      readFileSync(sshKey);
    } catch {
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'edgekit-test', '-f', sshKey]);
    }
    const pub = readFileSync(`${sshKey}.pub`, 'utf8').trim();
    const spec = readFileSync(join(REPO, 'examples', 'gateway.yml'), 'utf8').replace(/- ssh-ed25519 .*$/m, `- ${pub}`);
    const specPath = join(dir, 'gateway-test.yml');
    writeFileSync(specPath, spec);
    const img = await builtImage(specPath, 'qemu-x86_64');
    const manifest: SignedManifest = JSON.parse(readFileSync(img.manifest, 'utf8'));
    return { img, sshKey, manifest };
  }

  /**
   * A byte in the middle of a file's first data block, in the image, located by squashfs-tools-ng
   * (not by edgekit). The middle, because the 4 KiB verity blocks at either end of a file's data
   * may also hold the neighbouring file's bytes.
   */
  function fileDataByte(image: string, m: SignedManifest, path: string): number {
    const p = m.signed.payloads.find((x) => x.name === 'system-a')!;
    const sq = join(testDir(), `root-${p.sha256.slice(0, 8)}.sqfs`);
    execFileSync('dd', [`if=${image}`, `of=${sq}`, 'bs=4096', `skip=${p.offset / 4096}`, `count=${p.verity!.hashOffset / 4096}`, 'status=none']);
    const stat = sh('rdsquashfs', ['-s', path, sq]);
    const start = /Blocks start: (\d+)/.exec(stat);
    const first = /Block #0 size: (\d+)/.exec(stat);
    if (!start || !first || Number(first[1]) < 3 * 4096) throw new Error(`${path} has no large data block of its own:\n${stat}`);
    return p.offset + Number(start[1]) + Math.floor(Number(first[1]) / 2);
  }

  it('boots with its root verified by dm-verity, gets a DHCP lease and accepts ssh with the spec key', async () => {
    const { img, sshKey } = await gatewayWithTestKey();
    const port = await freePort();
    const vm = await bootImage(img.image, 'qemu-x86_64', { forwards: [{ hostPort: port, guestPort: 22 }] });
    try {
      await vm.waitFor(/root of slot a verified by dm-verity/, 180_000);
      await vm.waitFor(/eth0 has 10\.0\.2\.15/, 60_000);
      await vm.waitFor(/edgekit: gateway is up/, 60_000);
      const r = await sshRun(port, sshKey, 'admin', 'id -un; cat /etc/hostname; grep -c " / squashfs ro" /proc/mounts; ls /dev/mapper');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^admin$/m);
      expect(r.stdout).toMatch(/^gateway$/m);
      expect(r.stdout).toMatch(/^1$/m);
      expect(r.stdout).toMatch(/edgekit-root/);
      // Password logins are off: without the key the server refuses.
      const noKey = execFileSync('sh', ['-c', `ssh -p ${port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o PubkeyAuthentication=no admin@127.0.0.1 true 2>&1; echo rc=$?`], { encoding: 'utf8' });
      expect(noKey).toMatch(/rc=255/);
    } finally {
      await vm.stop();
    }
  }, 400_000);

  it('a flipped byte in a file read at boot (busybox, the init) stops slot A from booting', async () => {
    const { img, manifest } = await gatewayWithTestKey();
    const bad = join(testDir(), 'gateway-bad-init.img');
    execFileSync('cp', ['--sparse=always', img.image, bad]);
    flipByte(bad, fileDataByte(bad, manifest, '/usr/bin/busybox'));
    const vm = await bootImage(bad, 'qemu-x86_64');
    try {
      const failure = await vm.waitFor(/Kernel panic|verity.*(corrupt|error)|slot a has no|cannot mount the root/i, 240_000);
      expect(failure).toBeTruthy();
      const out = vm.output.text;
      expect(out).not.toMatch(/gateway is up/);
    } finally {
      await vm.stop();
    }
  }, 400_000);

  it('a flipped byte in a file not read at boot gives an I/O error when that file is read', async () => {
    const { img, sshKey, manifest } = await gatewayWithTestKey();
    const bad = join(testDir(), 'gateway-bad-dbclient.img');
    execFileSync('cp', ['--sparse=always', img.image, bad]);
    flipByte(bad, fileDataByte(bad, manifest, '/usr/bin/dbclient'));
    const port = await freePort();
    const vm = await bootImage(bad, 'qemu-x86_64', { forwards: [{ hostPort: port, guestPort: 22 }] });
    try {
      await vm.waitFor(/edgekit: gateway is up/, 240_000);
      const r = await sshRun(port, sshKey, 'admin', 'cat /usr/bin/dbclient > /dev/null; echo "read=$?"; cat /usr/bin/dropbearkey > /dev/null; echo "other=$?"');
      expect(r.stdout).toMatch(/read=1/);
      expect(r.stderr + r.stdout).toMatch(/Input\/output error/);
      expect(r.stdout).toMatch(/other=0/);
    } finally {
      await vm.stop();
    }
  }, 400_000);
});

