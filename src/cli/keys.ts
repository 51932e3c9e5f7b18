import type { Command } from 'commander';
import { generateKeyPair } from '../sign/keys.js';
import { printJson } from './output.js';

export function registerKeys(program: Command): void {
  const keys = program.command('keys').description('signing keys');
  keys
    .command('generate')
    .description('make an ed25519 signing key pair (private key file mode 0600)')
    .option('-o, --out <file>', 'private key file; the public key goes to <file>.pub', 'edgekit.key')
    .option('--json', 'machine-readable output')
    .action(async (o: { out: string; json?: boolean }) => {
      const r = await generateKeyPair(o.out);
      if (o.json) printJson(r);
      else console.log(`private key: ${r.privateKey} (keep it offline)\npublic key:  ${r.publicKey}\nkey id:      ${r.keyId}`);
    });
}
