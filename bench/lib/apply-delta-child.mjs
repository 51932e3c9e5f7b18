/**
 * applyDelta in a process of its own, so its peak memory (VmHWM: Node included) is its alone.
 * argv: repo delta active out sha256 size. Prints {seconds, vmhwm} as JSON.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [repo, delta, active, out, sha256, size] = process.argv.slice(2);
const { applyDelta } = await import(join(repo, 'dist/ota/delta/index.js'));
const t0 = performance.now();
await applyDelta({ delta, activePayload: active, out, expectedSha256: sha256, expectedSize: Number(size) });
const seconds = (performance.now() - t0) / 1000;
const vmhwm = Number(/VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
console.log(JSON.stringify({ seconds, vmhwm }));
