/** Checks FAT images with dosfstools and mtools, the tools that define what a valid FAT is. */
import { expect } from 'vitest';
import { runTool, runToolBytes } from './fs-image-tools.js';

/** Runs fsck.vfat -n -v and fails the test on any reported problem. Returns its output. */
export function expectFsckClean(img: string): string {
  const r = runTool('fsck.vfat', ['-n', '-v', img]);
  const out = r.stdout + r.stderr;
  expect(r.status, out).toBe(0);
  // With -n, fsck.fat still prints every problem it finds (and what it would do about it).
  expect(out).not.toMatch(/wrong|invalid|differ|corrupt|dirty|mismatch|bad |lost|orphan|duplicate|free cluster summary wrong|not terminated|truncat|\?\s*$|Leaving filesystem unchanged/im);
  expect(out).toMatch(/: \d+ files, \d+\/\d+ clusters\s*$/);
  return out;
}

/** fsck.vfat's verdict without failing the test: for negative controls. */
export function fsckOutput(img: string): { status: number | null; out: string } {
  const r = runTool('fsck.vfat', ['-n', '-v', img]);
  return { status: r.status, out: r.stdout + r.stderr };
}

/** Every path mtools sees, recursively, directories with a trailing '/', without the '::/' prefix. */
export function mtoolsPaths(img: string): string[] {
  const r = runTool('mdir', ['-i', img, '-/', '-b', '::']);
  expect(r.status, r.stderr).toBe(0);
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('::/'))
    .map((l) => l.slice(3))
    .sort();
}

export function mtoolsRead(img: string, path: string): Buffer {
  return runToolBytes('mcopy', ['-i', img, `::/${path}`, '-']);
}

/** The directory listing of one directory as mdir prints it (short name, size, date, long name). */
export function mdir(img: string, dir: string): string {
  const r = runTool('mdir', ['-i', img, `::/${dir}`]);
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}

export function minfo(img: string): string {
  const r = runTool('minfo', ['-i', img, '::']);
  expect(r.status, r.stderr).toBe(0);
  return r.stdout;
}
