/** Scratch files for QEMU tests: a blank disk, fake firmware descriptors, and a raw reader of a pty. */
import { mkdtempSync, rmSync, writeFileSync, truncateSync, mkdirSync, openSync, read, close } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function makeScratch(tag: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `edgekit-test-${tag}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A sparse, all-zero raw disk: no partition table, so UEFI finds nothing to boot and falls to its shell. */
export function blankDisk(dir: string, name = 'blank.img', bytes = 64 * 1024 * 1024): string {
  const path = join(dir, name);
  writeFileSync(path, '');
  truncateSync(path, bytes);
  return path;
}

/** Writes a firmware descriptor (QEMU docs/interop/firmware.json) into `dir`, creating it. */
export function writeDescriptor(
  dir: string,
  name: string,
  d: { arch: string; machines: string[]; code: string; vars: string; features?: string[]; format?: string },
): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, name);
  const body = {
    description: name,
    'interface-types': ['uefi'],
    mapping: {
      device: 'flash',
      executable: { filename: d.code, format: d.format ?? 'raw' },
      'nvram-template': { filename: d.vars, format: d.format ?? 'raw' },
    },
    targets: [{ architecture: d.arch, machines: d.machines }],
    features: d.features ?? [],
    tags: [],
  };
  writeFileSync(path, JSON.stringify(body, null, 2));
  return path;
}

/**
 * Opens `path` (a pty) right away with plain fs calls and collects what arrives until `until` matches,
 * the pty closes (EIO when QEMU exits), or `stop()` is called.
 */
export function readPty(path: string, until: RegExp): { text: () => string; done: Promise<string>; stop: () => void } {
  const fd = openSync(path, 'r');
  let text = '';
  let stopped = false;
  const buf = Buffer.alloc(4096);
  const done = new Promise<string>((resolve) => {
    const next = () => {
      if (stopped) return finish();
      read(fd, buf, 0, buf.length, null, (err, n) => {
        if (err || n === 0) return finish();
        text += buf.subarray(0, n).toString('latin1');
        if (until.test(text)) return finish();
        next();
      });
    };
    const finish = () => {
      stopped = true;
      close(fd, () => resolve(text));
    };
    next();
  });
  return { text: () => text, done, stop: () => (stopped = true) };
}
