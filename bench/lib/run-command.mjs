/** Runs a host tool to completion, output captured; a failure throws with the tool's own words. */
import { spawn } from 'node:child_process';

export function runCommand(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    p.on('error', (e) => reject(new Error(`${cmd}: ${e.message}`)));
    p.on('close', (code) => {
      if (code === 0) resolve({ stdout: out, stderr: err });
      else reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}:\n${(err || out).trim().split('\n').slice(-15).join('\n')}`));
    });
  });
}

/** A shell pipeline (cpio's input is a file list from find); arguments are passed as $1, $2... */
export function runShell(script, args = [], opts = {}) {
  return runCommand('sh', ['-c', script, 'sh', ...args], opts);
}

export async function hasCommand(cmd) {
  try {
    await runShell('command -v "$1"', [cmd]);
    return true;
  } catch {
    return false;
  }
}
