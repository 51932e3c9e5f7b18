/**
 * Boot, optionally wait for a console marker, stop: what `edgekit run` and image boot tests need.
 */
import { EdgekitError } from '../util/errors.js';
import type { QemuOptions } from './args.js';
import { startQemu, type QemuExit, type QemuSession } from './run.js';

export interface RunImageOptions extends Omit<QemuOptions, 'serial'> {
  /** Success is this pattern on the console (see QemuSession.waitFor for how text is matched). */
  expect?: RegExp;
  /** With `expect`: failing after this long. Without: how long to let the guest run. */
  timeoutMs?: number;
  /** Copy the console to this process's terminal (and forward keys when it is one). */
  echo?: boolean;
  /** Put the console on a pty instead (can't be combined with `expect`). */
  pty?: boolean;
  /** Called once QEMU runs, e.g. to print the pty path or to drive the console further. */
  onStart?: (session: QemuSession) => void | Promise<void>;
}

export interface RunImageResult {
  /** The console text that matched `expect`. */
  matched?: string;
  exit: QemuExit;
}

/**
 * Resolves when `expect` shows up (QEMU is then stopped), or, without `expect`, when QEMU exits, the
 * time runs out, or the user presses Ctrl-C. Rejects with an EdgekitError when the marker does not come.
 */
export async function runImage(opts: RunImageOptions): Promise<RunImageResult> {
  const { expect, timeoutMs, echo, pty, onStart, ...qemu } = opts;
  if (pty && expect) throw new EdgekitError('--pty and --expect exclude each other: with a pty another program reads the console');
  if (expect && timeoutMs === undefined) throw new EdgekitError('a run that expects a console marker needs a timeout');
  const session = await startQemu({ ...qemu, serial: pty ? 'pty' : echo ? 'stdio' : 'pipe' });
  const onSigint = () => void session.stop();
  process.once('SIGINT', onSigint);
  try {
    await onStart?.(session);
    if (expect) {
      const matched = await session.waitFor(expect, timeoutMs!);
      return { matched, exit: await session.stop() };
    }
    if (timeoutMs !== undefined) {
      const timer = setTimeout(() => void session.stop(), timeoutMs);
      try {
        return { exit: await session.exited };
      } finally {
        clearTimeout(timer);
      }
    }
    return { exit: await session.exited };
  } finally {
    process.off('SIGINT', onSigint);
    await session.stop();
  }
}
