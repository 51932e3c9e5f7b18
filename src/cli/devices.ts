import type { Command } from 'commander';
import { defaultPlatform, formatSize, NON_REMOVABLE, tooSmallReason, type Drive } from '../flash/drives.js';
import { openSource } from '../flash/source.js';
import { EdgekitError } from '../util/errors.js';
import { printJson } from './output.js';

/** The decompressed size of an image (a raw file's size, or the block map's for a compressed one). */
async function imageSize(image: string): Promise<number> {
  const src = await openSource(image);
  if (src.size === undefined) throw new EdgekitError(`${image}: cannot tell the image's size without its .bmap`);
  return src.size;
}

function describe(d: Drive): string {
  const facts = [
    formatSize(d.size),
    d.bus,
    d.model,
    d.serial && `serial ${d.serial}`,
    d.removable ? 'removable' : 'fixed',
    d.readOnly && 'read-only',
  ].filter(Boolean);
  const lines = [`${d.path}  ${facts.join(', ')}`];
  if (d.byPath) lines.push(`    port: ${d.byPath}`);
  if (d.eligible) lines.push('    ok to flash');
  else if (d.reasons.length === 1 && d.reasons[0] === NON_REMOVABLE) lines.push(`    fixed ${d.bus} disk: flash it only with --force`);
  else lines.push(`    not eligible: ${d.reasons.join('; ')}`);
  return lines.join('\n');
}

export function registerDevices(program: Command): void {
  program
    .command('devices')
    .description('list the drives that can be flashed, and why the others cannot')
    .option('--json', 'machine-readable output')
    .option('--all', 'include system disks (the ones holding the running system), which are never flashed')
    .option('--image <file>', 'also mark drives too small for this image')
    .action(async (o: { json?: boolean; all?: boolean; image?: string }) => {
      const size = o.image ? await imageSize(o.image) : undefined;
      const drives = (await defaultPlatform().list())
        .filter((d) => o.all || !d.system)
        .map((d) => {
          const small = size === undefined ? undefined : tooSmallReason(d.size, size);
          return small ? { ...d, reasons: [...d.reasons, small], eligible: false } : d;
        });
      if (o.json) {
        printJson({ ...(o.image ? { image: { path: o.image, size } } : {}), drives });
        return;
      }
      if (!drives.length) {
        console.log(o.all ? 'no drives found' : 'no drives found besides the system disk (see --all)');
        return;
      }
      console.log(drives.map(describe).join('\n'));
    });
}
