/**
 * The bench flows end to end through the CLI: tray mode flashes a drive plugged in while it waits,
 * and --watch follows the flashed board's first boot on its serial console (a QEMU pty standing in
 * for the board and its USB serial adapter).
 */
import { execFileSync, spawn } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { builtImage, CLI, edgekit, testDir } from './helpers/built-images.js';
import { bootOnPty } from './helpers/console-qemu.js';

const asRoot = process.getuid?.() === 0;

describe('edgekit flash at the bench', () => {
  it.runIf(asRoot)('--auto flashes a drive that appears while it waits, and stops on Ctrl-C', async () => {
    const img = await builtImage('minimal', 'qemu-x86_64');
    const backing = join(testDir(), 'tray-card.img');
    execFileSync('truncate', ['-s', String(img.size + (16 << 20)), backing]);
    // Loop devices report themselves non-removable: --force lets tray mode take them.
    const child = spawn('node', [CLI, 'flash', img.image, '--pubkey', img.pub, '--auto', '--force'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
    let dev = '';
    try {
      await until(() => /waiting for drives/.test(out), 30_000, () => out);
      dev = execFileSync('losetup', ['--find', '--show', backing], { encoding: 'utf8' }).trim();
      await until(async () => (await edgekit(['verify', dev, '--pubkey', img.pub])).code === 0, 120_000, () => out);
      child.kill('SIGINT');
      expect(await exited).toBe(0);
      expect(out).toMatch(/tray mode stopped: 1 flashed, 0 failed/);
    } finally {
      child.kill('SIGKILL');
      if (dev) execFileSync('losetup', ['-d', dev]);
      rmSync(backing, { force: true });
    }
  }, 300_000);

  it('--watch reports the flashed board booting on its serial console', async () => {
    const img = await builtImage('minimal', 'qemu-x86_64');
    const card = join(testDir(), 'watched-card.img');
    writeFileSync(card, '');
    // The "board" boots the image; its console is a pty, opened by the flasher after writing.
    const board = await bootOnPty(img.image, 'qemu-x86_64');
    try {
      const r = await edgekit([
        'flash', img.image, '--pubkey', img.pub, '--to', card,
        '--watch', `${card}=${board.ptyPath}`, '--expect', 'edgekit: minimal is up', '--timeout', '240', '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
      const boot = lines.find((l) => l.type === 'boot');
      expect(boot, r.stdout).toBeTruthy();
      expect(boot.ok).toBe(true);
      expect(boot.port).toBe(board.ptyPath);
    } finally {
      await board.stop();
    }
  }, 400_000);
});

async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, context: () => string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out; output so far:\n${context().slice(-3000)}`);
}
