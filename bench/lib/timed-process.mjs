/**
 * Runs a command under GNU time: wall-clock seconds, CPU seconds (user + system, the process and
 * the children it waited for) and the peak resident memory of the whole process (what the kernel
 * reports as maxrss), for comparing tools like for like.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { runCommand } from './run-command.mjs';

export async function timedProcess(cmd, args, opts = {}) {
  const report = join(tmpdir(), `edgekit-time-${process.pid}-${Math.random().toString(36).slice(2)}`);
  try {
    const r = await runCommand('/usr/bin/time', ['-f', '%e %U %S %M', '-o', report, cmd, ...args], opts);
    const [elapsed, user, system, maxKiB] = (await readFile(report, 'utf8')).trim().split('\n').pop().split(' ').map(Number);
    return { seconds: elapsed, cpuSeconds: user + system, peakRss: maxKiB * 1024, stdout: r.stdout };
  } finally {
    await rm(report, { force: true });
  }
}
