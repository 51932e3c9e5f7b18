/**
 * Connects a guest console to this process's terminal: console text to stdout, and, when stdin is
 * a terminal, keystrokes to the guest in raw mode (so Ctrl-C reaches the guest's shell).
 * Ctrl-] ends the run, as in telnet: with raw mode on, nothing else can.
 */
import type { Writable } from 'node:stream';
import type { ConsoleOutput } from './console.js';

const QUIT_KEY = 0x1d; // Ctrl-]

/** Returns a function that undoes the attachment (restores the terminal). */
export function attachTerminal(output: ConsoleOutput, guestInput: Writable, quit: () => void): () => void {
  const onData = (chunk: string) => process.stdout.write(chunk);
  output.on('data', onData);

  const stdin = process.stdin;
  // Without a terminal there is no one typing: leave stdin alone (it may be a closed pipe in CI).
  if (!stdin.isTTY) return () => output.off('data', onData);

  const onKeys = (keys: Buffer) => {
    const q = keys.indexOf(QUIT_KEY);
    if (q >= 0) {
      if (q > 0) guestInput.write(keys.subarray(0, q));
      quit();
      return;
    }
    guestInput.write(keys);
  };
  stdin.setRawMode(true);
  stdin.on('data', onKeys);
  stdin.resume();
  process.stderr.write('edgekit: console attached; Ctrl-] ends the run\n');
  let detached = false;
  return () => {
    if (detached) return;
    detached = true;
    output.off('data', onData);
    stdin.off('data', onKeys);
    stdin.setRawMode(false);
    stdin.pause();
  };
}
