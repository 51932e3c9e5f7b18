/**
 * What a server process costs, read from /proc (Linux): its resident memory, sampled while a run
 * goes on, and the CPU time of it and its descendants (for PostgreSQL: the postmaster and its
 * backends), so a run can be charged CPU milliseconds per request.
 */
import { readdir, readFile } from 'node:fs/promises';

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** VmRSS of a process in bytes, or null once it is gone. */
export async function rssOf(pid) {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** Samples a process's RSS every `everyMs` until stop() is called; stop() returns the peak in bytes. */
export function sampleRss(pid, everyMs = 200) {
  let peak = 0;
  const take = async () => {
    const r = await rssOf(pid);
    if (r !== null && r > peak) peak = r;
  };
  void take();
  const timer = setInterval(() => void take(), everyMs);
  return {
    async stop() {
      clearInterval(timer);
      await take();
      return peak;
    },
  };
}

/** user + system CPU seconds of the processes `roots` and all their live descendants. */
export async function cpuSecondsOfTree(roots) {
  const stats = new Map();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = await readFile(`/proc/${name}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces), from field 3 (state) on.
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      stats.set(Number(name), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
    } catch {
      /* the process ended while we looked */
    }
  }
  const inTree = new Set(roots);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, s] of stats) {
      if (!inTree.has(pid) && inTree.has(s.ppid)) (inTree.add(pid), (grew = true));
    }
  }
  let ticks = 0;
  for (const pid of inTree) ticks += stats.get(pid)?.ticks ?? 0;
  return ticks / TICKS_PER_SECOND;
}
