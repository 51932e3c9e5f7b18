/**
 * Progress for long work. On a terminal: one status line redrawn in place (phase, bytes, rate);
 * with --json: one JSON object per line on stdout-compatible streams; otherwise silent.
 * Library functions take an optional `Progress` and never print on their own.
 */
export interface ProgressEvent {
  phase: string;
  detail?: string;
  done?: number;
  total?: number;
}

export type Progress = (ev: ProgressEvent) => void;

export const noProgress: Progress = () => {};

export function terminalProgress(stream: NodeJS.WriteStream = process.stderr): Progress & { end(): void } {
  let last = 0;
  let shown = false;
  const started = Date.now();
  const fn = ((ev: ProgressEvent) => {
    const now = Date.now();
    const final = ev.total !== undefined && ev.done === ev.total;
    if (!final && now - last < 80) return;
    last = now;
    let line = `${ev.phase}${ev.detail ? ` ${ev.detail}` : ''}`;
    if (ev.done !== undefined) {
      const rate = ev.done / Math.max((now - started) / 1000, 0.001);
      line += ev.total ? ` ${bar(ev.done / ev.total)} ${mib(ev.done)}/${mib(ev.total)} MiB` : ` ${mib(ev.done)} MiB`;
      line += ` ${mib(rate)} MiB/s`;
      if (ev.total && rate > 0) line += ` ETA ${Math.ceil((ev.total - ev.done) / rate)} s`;
    }
    const width = stream.columns ?? 100;
    stream.write(`\r\x1b[2K${line.slice(0, width - 1)}`);
    shown = true;
  }) as Progress & { end(): void };
  fn.end = () => {
    if (shown) stream.write('\r\x1b[2K');
  };
  return fn;
}

export function jsonProgress(stream: NodeJS.WritableStream = process.stderr): Progress {
  let last = 0;
  return (ev) => {
    const now = Date.now();
    const final = ev.total === undefined || ev.done === ev.total;
    if (!final && now - last < 250) return;
    last = now;
    stream.write(JSON.stringify({ type: 'progress', ...ev }) + '\n');
  };
}

function bar(fraction: number): string {
  const n = 24;
  const filled = Math.max(0, Math.min(n, Math.round(fraction * n)));
  return `[${'#'.repeat(filled)}${'.'.repeat(n - filled)}]`;
}

function mib(n: number): string {
  return (n / 1048576).toFixed(1);
}
