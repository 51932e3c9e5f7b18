import type { Command } from 'commander';
import { formatInspect, inspectImage } from '../image/inspect.js';
import { loadPublicKey } from '../sign/keys.js';
import { printJson } from './output.js';

export function registerInspect(program: Command): void {
  program
    .command('inspect <image>')
    .description('show partitions, slots, payloads, manifest and signature status of an image or device')
    .option('--pubkey <file>', 'check the signature with this public key')
    .option('--json', 'machine-readable output')
    .action(async (target: string, o: { pubkey?: string; json?: boolean }) => {
      const key = o.pubkey ? await loadPublicKey(o.pubkey) : undefined;
      const r = await inspectImage(target, key);
      if (o.json) printJson(r);
      else console.log(formatInspect(r));
    });
}
