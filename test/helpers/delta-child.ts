/**
 * Runs applyDelta (from dist/, as the device agent would bundle it) in a child process of its own
 * and reports that process's peak resident memory (VmHWM: Node itself included).
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './built-images.js';

const run = promisify(execFile);

const CHILD = `
import { readFileSync } from 'node:fs';
const [entry, delta, active, out, sha, size] = process.argv.slice(1);
const { applyDelta } = await import(entry);
await applyDelta({ delta, activePayload: active, out, expectedSha256: sha, expectedSize: Number(size) });
const hwm = Number(/VmHWM:\\s+(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
console.log(JSON.stringify({ peakRss: hwm }));
`;

export async function applyInChild(o: { delta: string; active: string; out: string; sha256: string; size: number }): Promise<{ peakRss: number }> {
  const entry = join(REPO, 'dist/ota/delta/index.js');
  const { stdout } = await run('node', ['--input-type=module', '-e', CHILD, entry, o.delta, o.active, o.out, o.sha256, String(o.size)], { maxBuffer: 1 << 20 });
  return JSON.parse(stdout.trim());
}
