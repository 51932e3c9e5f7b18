/**
 * One progress line per target on a terminal (bytes, speed, ETA), redrawn in place; and the same
 * events as JSON lines for --json. The engine reports; this only draws.
 */
import type { ProgressEvent } from '../util/progress.js';

export interface TargetProgress {
  update(target: string, ev: ProgressEvent): void;
  end(): void;
}

export function terminalBars(targets: string[], stream: NodeJS.WriteStream = process.stderr): TargetProgress {
  const state = new Map<string, { ev: ProgressEvent; phaseStart: number }>();
  let drawn = 0;
  let last = 0;
  const width = () => (stream.columns ?? 100) - 1;
  const draw = (force = false) => {
    const now = Date.now();
    if (!force && now - last < 100) return;
    last = now;
    const name = Math.max(...targets.map((t) => t.length));
    const lines = targets.map((t) => {
      const s = state.get(t);
      if (!s) return `${t.padEnd(name)} waiting`;
      return `${t.padEnd(name)} ${describe(s.ev, (now - s.phaseStart) / 1000)}`.slice(0, width());
    });
    stream.write((drawn ? `\x1b[${drawn}A` : '') + lines.map((l) => `\r\x1b[2K${l}\n`).join(''));
    drawn = lines.length;
  };
  return {
    update(target, ev) {
      const prev = state.get(target);
      state.set(target, { ev, phaseStart: prev && prev.ev.phase === ev.phase ? prev.phaseStart : Date.now() });
      draw(ev.total !== undefined && ev.done === ev.total);
    },
    end() {
      if (state.size) draw(true);
    },
  };
}

function describe(ev: ProgressEvent, seconds: number): string {
  if (ev.done === undefined) return ev.phase;
  const rate = ev.done / Math.max(seconds, 0.001);
  let s = `${ev.phase.padEnd(6)}`;
  if (ev.total) {
    const n = 20;
    const filled = Math.max(0, Math.min(n, Math.round((ev.done / ev.total) * n)));
    s += ` [${'#'.repeat(filled)}${'.'.repeat(n - filled)}] ${mib(ev.done)}/${mib(ev.total)} MiB`;
  } else s += ` ${mib(ev.done)} MiB`;
  s += ` ${mib(rate)} MiB/s`;
  if (ev.total && rate > 0) s += ` ETA ${Math.ceil((ev.total - ev.done) / rate)} s`;
  return s;
}

function mib(n: number): string {
  return (n / 1048576).toFixed(1);
}

/** JSON lines, at most one per target and phase every 250 ms, plus every phase's last one. */
export function jsonLines(stream: NodeJS.WritableStream = process.stdout): TargetProgress {
  const last = new Map<string, number>();
  return {
    update(target, ev) {
      const now = Date.now();
      const key = `${target}\u0000${ev.phase}`;
      const final = ev.total === undefined || ev.done === ev.total;
      if (!final && now - (last.get(key) ?? 0) < 250) return;
      last.set(key, now);
      stream.write(JSON.stringify({ type: 'progress', target, ...ev }) + '\n');
    },
    end() {},
  };
}

export const silent: TargetProgress = { update() {}, end() {} };
