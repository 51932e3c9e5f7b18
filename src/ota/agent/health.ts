/**
 * Health checks after booting a new slot: required processes running, a command that exits 0, the
 * release server answering. They are retried until they pass or the configured time runs out.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AgentConfig } from './config.js';

export interface HealthResult {
  ok: boolean;
  /** The first check that failed. */
  reason?: string;
}

export interface HealthProbes {
  /** Names of running processes (/proc/<pid>/comm). */
  processes(): Promise<Set<string>>;
  /** Runs a shell command; its exit code and output tail. */
  command(cmd: string): Promise<{ code: number; output: string }>;
  /** Whether the server answers HTTP at all. */
  reachable(url: string): Promise<boolean>;
}

export const systemProbes: HealthProbes = {
  async processes() {
    const names = new Set<string>();
    for (const pid of await readdir('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
      if (comm) names.add(comm.trim());
    }
    return names;
  },
  command: (cmd) =>
    new Promise((resolve) => {
      execFile('/bin/sh', ['-c', cmd], { timeout: 60_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
        resolve({ code, output: (stdout + stderr).trim().slice(-200) });
      });
    }),
  reachable: (url) =>
    new Promise((resolve) => {
      const u = new URL('metadata/timestamp.json', url.replace(/\/*$/, '/'));
      const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(u, { method: 'HEAD', timeout: 10_000 }, (res) => {
        res.resume();
        resolve((res.statusCode ?? 500) < 500);
      });
      req.on('timeout', () => req.destroy());
      req.on('error', () => resolve(false));
      req.end();
    }),
};

export async function checkHealthOnce(config: AgentConfig, probes: HealthProbes): Promise<HealthResult> {
  const h = config.health;
  if (h.processes.length) {
    const running = await probes.processes();
    const missing = h.processes.filter((p) => !running.has(p));
    if (missing.length) return { ok: false, reason: `process ${missing.join(', ')} not running` };
  }
  if (h.command) {
    const r = await probes.command(h.command);
    if (r.code !== 0) return { ok: false, reason: `health command \`${h.command}\` exited ${r.code}${r.output ? `: ${r.output}` : ''}` };
  }
  // The fleet server when the device has one (it hands out the releases), else the release server.
  const server = config.fleet?.server ?? config.server;
  if (h.server && server && !(await probes.reachable(server))) return { ok: false, reason: `server ${server} unreachable` };
  return { ok: true };
}

/** Checks until they pass or `health.timeout` seconds are spent (each failure waits `pauseMs`). */
export async function checkHealth(config: AgentConfig, probes: HealthProbes, opts: { pauseMs?: number; sleep?: (ms: number) => Promise<void>; now?: () => number } = {}): Promise<HealthResult> {
  const now = opts.now ?? (() => performance.now());
  const sleep = opts.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const end = now() + config.health.timeout * 1000;
  for (;;) {
    const r = await checkHealthOnce(config, probes);
    if (r.ok || now() >= end) return r;
    await sleep(opts.pauseMs ?? 3000);
  }
}
