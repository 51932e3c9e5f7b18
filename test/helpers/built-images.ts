/**
 * Images built once per test run and shared by the test files that inspect or boot them.
 * Built with the real builder through the CLI, as a user would.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import type { BuildResult } from '../../src/build/build.js';

const run = promisify(execFile);
export const REPO = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const CLI = join(REPO, 'bin', 'edgekit.js');

export function testDir(): string {
  const dir = process.env.EDGEKIT_TEST_DIR;
  if (!dir) throw new Error('EDGEKIT_TEST_DIR is not set (run through vitest with test/global-setup.ts)');
  return dir;
}

/** A signing key pair shared by the run. */
export async function testKey(): Promise<{ key: string; pub: string }> {
  const key = join(testDir(), 'test.key');
  if (!existsSync(key)) await run('node', [CLI, 'keys', 'generate', '-o', key]);
  return { key, pub: `${key}.pub` };
}

/** What `edgekit build --json` prints (the build result without the manifest), plus the key pair. */
export interface BuiltImage extends Omit<BuildResult, 'manifestDoc'> {
  key: string;
  pub: string;
}

/** Builds `spec` for `board` once per run (examples/<spec>.yml unless a path is given). */
export async function builtImage(spec: string, board: string, extra: string[] = []): Promise<BuiltImage> {
  const specPath = spec.includes('/') ? spec : join(REPO, 'examples', `${spec}.yml`);
  const name = `${spec.replace(/\W+/g, '_')}-${board}${extra.length ? '-' + extra.join('').replace(/\W+/g, '') : ''}`;
  const out = join(testDir(), 'images', name);
  const resultFile = join(out, 'result.json');
  const { key, pub } = await testKey();
  if (!existsSync(resultFile)) {
    mkdirSync(out, { recursive: true });
    const { stdout } = await run('node', [CLI, 'build', specPath, '--board', board, '--key', key, '-o', out, '--json', ...extra], {
      maxBuffer: 16 << 20,
    });
    writeFileSync(resultFile, stdout);
  }
  return { ...JSON.parse(readFileSync(resultFile, 'utf8')), key, pub };
}

export async function edgekit(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}) {
  try {
    const r = await run('node', [CLI, ...args], { maxBuffer: 64 << 20, env: { ...process.env, ...opts.env }, cwd: opts.cwd });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}
