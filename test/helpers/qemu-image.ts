import { createServer } from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { emulationFromBoard } from '../../src/qemu/board.js';
import { startQemu, type QemuSession } from '../../src/qemu/run.js';
import { loadBoard } from '../../src/spec/board.js';

const run = promisify(execFile);

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Boots an image file the way `edgekit run` does, from its board's emulation settings. */
export async function bootImage(image: string, board: string, opts: { forwards?: Array<{ hostPort: number; guestPort: number }>; snapshot?: boolean } = {}): Promise<QemuSession> {
  const emu = emulationFromBoard(loadBoard(board).value)!;
  return startQemu({
    ...emu,
    firmware: emu.firmware ?? 'uefi',
    image,
    snapshot: opts.snapshot ?? true,
    serial: 'pipe',
    net: { user: true, hostForwards: opts.forwards ?? [] },
  });
}

/** Runs a command over ssh, retrying while the server comes up (host keys are made on first use). */
export async function sshRun(port: number, key: string, user: string, command: string, deadlineMs = 90_000): Promise<{ stdout: string; stderr: string; code: number }> {
  const args = ['-i', key, '-p', String(port), '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=20', '-o', 'LogLevel=ERROR', `${user}@127.0.0.1`, command];
  const end = Date.now() + deadlineMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const r = await run('ssh', args, { timeout: 60_000 });
      return { ...r, code: 0 };
    } catch (err) {
      const e = err as { code?: number; stdout?: string; stderr?: string };
      // 255 is ssh's own failure (connection, auth); anything else is the remote command's status.
      if (typeof e.code === 'number' && e.code !== 255) return { stdout: e.stdout ?? '', stderr: e.stderr ?? '', code: e.code };
      last = err;
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  throw new Error(`ssh to 127.0.0.1:${port} did not succeed: ${(last as Error)?.message}`);
}
