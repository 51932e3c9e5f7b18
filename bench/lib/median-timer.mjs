/**
 * Runs a measured step several times and keeps the median: one run on a shared 2-core machine is
 * noise, the median of a few is a figure. `prepare` runs before each timed run, outside the clock
 * (for instance to delete the previous run's output).
 */
import { performance } from 'node:perf_hooks';

export async function medianTime(runs, step, prepare = async () => {}) {
  const seconds = [];
  let last;
  for (let i = 0; i < runs; i++) {
    await prepare();
    const t0 = performance.now();
    last = await step();
    seconds.push((performance.now() - t0) / 1000);
  }
  return { median: median(seconds), runs: seconds, last };
}

export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}
