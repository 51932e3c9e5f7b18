/** Helpers for tests that write partition tables and filesystems into sparse image files. */
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

export function makeTempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `edgekit-${prefix}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Creates a sparse file of `size` bytes and writes each buffer at its offset. */
export function writeSparseImage(path: string, size: number, writes: Array<{ offset: number; data: Buffer }>): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const w of writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
  } finally {
    closeSync(fd);
  }
}

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a system tool with a fixed locale (English messages, UTF-8 names) so its output can be matched. */
export function runTool(cmd: string, args: string[], input?: string): ToolResult {
  const r = spawnSync(cmd, args, {
    encoding: 'utf8',
    input,
    maxBuffer: 256 * 1024 * 1024,
    env: { ...process.env, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8', MTOOLS_SKIP_CHECK: '1' },
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Like runTool, but stdout as bytes (for mcopy to stdout). */
export function runToolBytes(cmd: string, args: string[]): Buffer {
  const r = spawnSync(cmd, args, { maxBuffer: 512 * 1024 * 1024, env: { ...process.env, LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8', MTOOLS_SKIP_CHECK: '1' } });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.toString()}`);
  return r.stdout;
}
