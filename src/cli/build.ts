import type { Command } from 'commander';
import { build } from '../build/build.js';
import { jsonProgress, noProgress, terminalProgress } from '../util/progress.js';
import { printJson } from './output.js';

export function registerBuild(program: Command): void {
  program
    .command('build <spec>')
    .description('build a signed, reproducible disk image from an image spec')
    .requiredOption('-b, --board <id>', 'board id (see `edgekit boards`) or a board file')
    .requiredOption('-k, --key <file>', 'ed25519 private key that signs the manifest')
    .option('-o, --out <dir>', 'output folder', 'out')
    .option('--lock <file>', 'pin every package to this lock file (from an earlier build)')
    .option('--mirror <url>', 'Debian mirror (default: the host\'s Debian apt source)')
    .option('--zstd', 'also write <image>.img.zst')
    .option('--offline', 'no network: use the cached signed indices and packages (or a complete --lock)')
    .option('--json', 'print what was written as JSON (progress as JSON lines on stderr)')
    .action(async (spec: string, o: { board: string; key: string; out: string; lock?: string; mirror?: string; zstd?: boolean; offline?: boolean; json?: boolean }) => {
      const tty = process.stderr.isTTY && !o.json;
      const progress = o.json ? jsonProgress() : tty ? terminalProgress() : noProgress;
      const started = Date.now();
      try {
        const r = await build({ spec, board: o.board, key: o.key, outDir: o.out, lock: o.lock, mirror: o.mirror, zstd: o.zstd, offline: o.offline, progress });
        const seconds = (Date.now() - started) / 1000;
        if (o.json) {
          const { manifestDoc, ...files } = r;
          printJson({ ...files, seconds, name: manifestDoc.name, version: manifestDoc.version, board: manifestDoc.board });
          return;
        }
        console.log(
          [
            `built ${r.image} in ${seconds.toFixed(1)} s: ${(r.size / 1048576).toFixed(0)} MiB, ${(r.mappedBytes / 1048576).toFixed(1)} MiB mapped, ${r.packages} packages`,
            `  block map  ${r.bmap}`,
            `  manifest   ${r.manifest}`,
            `  lock       ${r.lock}`,
            `  SBOM       ${r.sbom}`,
            ...(r.zst ? [`  zstd       ${r.zst}`] : []),
          ].join('\n'),
        );
      } finally {
        (progress as { end?: () => void }).end?.();
      }
    });
}
