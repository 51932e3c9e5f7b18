/**
 * U-Boot environment files checked with the tools that define them: fw_printenv/fw_setenv
 * (libubootenv) reading a plain file through a fw_env.config, and u-boot-tools' mkenvimage making
 * a reference block from `name=value` lines.
 */
import { expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

export function sh(cmd: string, args: string[], input?: string | Buffer): { status: number | null; out: string } {
  const r = spawnSync(cmd, args, { input, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C', SOURCE_DATE_EPOCH: '1700000000' } });
  if (r.error) throw r.error;
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

let configs = 0;

/** A fw_env.config for fw_printenv/fw_setenv on plain files: "<file> <offset> <size>", one line per copy. */
export function fwConfig(dir: string, files: string[], size: number): string {
  const cfg = join(dir, `fw_env-${configs++}.config`);
  writeFileSync(cfg, files.map((f) => `${f} 0x0 0x${size.toString(16)}\n`).join(''));
  return cfg;
}

/** What fw_printenv reads from the environment `cfg` points at; fails the test when it cannot. */
export function fwPrintenv(cfg: string): Record<string, string> {
  const r = sh('fw_printenv', ['-c', cfg]);
  expect(r.status, r.out).toBe(0);
  return Object.fromEntries(r.out.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

/** What fw_printenv reads from an environment block held in memory. */
export function fwPrintenvOf(dir: string, block: Buffer): Record<string, string> {
  const file = join(dir, `env-${configs++}.bin`);
  writeFileSync(file, block);
  return fwPrintenv(fwConfig(dir, [file], block.length));
}

/** mkenvimage's block for these variables (in U-Boot's sorted order, NUL padding), for a byte comparison. */
export function mkenvimage(dir: string, vars: Record<string, string>, size: number): Buffer {
  const text = join(dir, `vars-${configs}.txt`);
  const out = join(dir, `mkenvimage-${configs++}.bin`);
  const keys = Object.keys(vars).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  writeFileSync(text, keys.map((k) => `${k}=${vars[k]}\n`).join(''));
  const r = sh('mkenvimage', ['-s', String(size), '-p', '0', '-o', out, text]);
  expect(r.status, r.out).toBe(0);
  return readFileSync(out);
}
