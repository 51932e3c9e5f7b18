import type { Command } from 'commander';
import { rpiboot } from '../flash/rpiboot/client.js';
import type { UsbBootTransportFactory } from '../flash/rpiboot/transport.js';
import { EdgekitError } from '../util/errors.js';
import { jsonProgress, noProgress, terminalProgress } from '../util/progress.js';
import { printJson } from './output.js';

/** `transport` is for tests: the command normally talks to real USB. */
export function registerRpiboot(program: Command, deps: { transport?: UsbBootTransportFactory } = {}): void {
  program
    .command('rpiboot')
    .description('put a Raspberry Pi Compute Module or Zero in USB boot mode into USB mass-storage mode')
    .requiredOption('--usbboot-dir <dir>', 'folder with the second-stage boot files (see docs/rpiboot.md)')
    .option('--timeout <seconds>', 'longest wait for the device at each step', '30')
    .option('--json', 'machine-readable output')
    .action(async (o: { usbbootDir: string; timeout: string; json?: boolean }) => {
      const seconds = Number(o.timeout);
      if (!Number.isFinite(seconds) || seconds < 0) throw new EdgekitError(`--timeout ${o.timeout}: not a number of seconds`);
      const progress = o.json ? jsonProgress() : process.stderr.isTTY ? terminalProgress() : noProgress;
      const r = await rpiboot({ usbbootDir: o.usbbootDir, timeoutMs: seconds * 1000, progress, transport: deps.transport }).finally(() =>
        (progress as { end?: () => void }).end?.(),
      );
      if (o.json) {
        printJson({ ...r, product: `0x${r.product.toString(16).padStart(4, '0')}` });
        return;
      }
      console.log(`${r.chip.toUpperCase()} at ${r.location}${r.serial ? ` (serial ${r.serial})` : ''}: sent ${r.filesSent.join(', ')}`);
      if (r.filesMissing.length) console.log(`not in ${o.usbbootDir}: ${r.filesMissing.join(', ')}`);
      if (r.filesRefused.length) console.log(`refused: ${r.filesRefused.join('; ')}`);
      console.log('the eMMC should appear as a USB drive in a few seconds (edgekit devices lists it)');
    });
}
