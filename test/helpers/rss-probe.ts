/**
 * Peak memory of a node child process as the kernel counts it for that program: VmHWM from
 * /proc/self/status, printed when the process exits (load the probe with `node --import <probe>`).
 * Not getrusage's maxRSS: Linux keeps that high-water mark across execve, so a child forked from
 * a big process (the test runner) reports the parent's size whenever the fork caught it large.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Writes the probe module into `dir`; returns its path. */
export function writeRssProbe(dir: string): string {
  const probe = join(dir, 'rss-probe.mjs');
  writeFileSync(
    probe,
    "import { readFileSync } from 'node:fs';\n" +
      "process.on('exit', () => process.stderr.write(`vmhwm-kib=${/VmHWM:\\s*(\\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))[1]}\\n`));\n",
  );
  return probe;
}

/** The peak in bytes from a probed process's output. */
export function peakRss(output: string): number {
  const m = /vmhwm-kib=(\d+)/.exec(output);
  if (!m) throw new Error(`no vmhwm-kib= line in the output (was the probe loaded?):\n${output.slice(-2000)}`);
  return Number(m[1]) * 1024;
}
