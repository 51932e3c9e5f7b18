import type { Command } from 'commander';
import { verifyImage } from '../image/verify.js';
import { loadPublicKey } from '../sign/keys.js';
import { EdgekitError } from '../util/errors.js';
import { noProgress, terminalProgress } from '../util/progress.js';
import { printJson } from './output.js';

export function registerVerify(program: Command): void {
  program
    .command('verify <image-or-device>')
    .description('check the manifest signature and every signed byte of an image or a flashed device')
    .requiredOption('--pubkey <file>', 'the public key the image must be signed with')
    .option('--json', 'machine-readable output')
    .action(async (target: string, o: { pubkey: string; json?: boolean }) => {
      const key = await loadPublicKey(o.pubkey);
      const progress = process.stderr.isTTY && !o.json ? terminalProgress() : noProgress;
      const r = await verifyImage(target, key, progress).finally(() => (progress as { end?: () => void }).end?.());
      if (o.json) printJson({ target: r.target, ok: r.ok, signature: r.signature, checks: r.checks });
      else {
        console.log(`signature: ${r.signature.ok ? 'valid' : `INVALID: ${r.signature.reason}`}`);
        for (const c of r.checks) console.log(`  ${c.ok ? 'ok  ' : 'BAD '} ${c.name} (${c.size} bytes at ${c.offset})${c.detail ? `: ${c.detail}` : ''}`);
      }
      if (!r.ok) {
        const bad = r.signature.ok ? r.checks.filter((c) => !c.ok).map((c) => c.name).join(', ') : 'signature';
        throw new EdgekitError(`${target}: verification failed: ${bad}`);
      }
    });
}
