import type { Command } from 'commander';
import { stringify } from 'yaml';
import { listBoardIds, loadBoard, loadBoardFile } from '../spec/board.js';
import { SpecError } from '../spec/load.js';
import { EdgekitError } from '../util/errors.js';
import { printJson } from './output.js';

export function registerBoards(program: Command): void {
  const boards = program.command('boards').description('list, show and check board definitions');
  boards
    .command('list', { isDefault: true })
    .description('list the boards edgekit ships')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }) => {
      const rows = listBoardIds().map((id) => {
        const b = loadBoard(id).value;
        return { id, name: b.name, arch: b.arch, boot: `${b.boot.firmware}/${b.update.bootchooser}`, media: b.flash.media, qemu: !!b.emulation };
      });
      if (o.json) return printJson(rows);
      for (const r of rows) {
        console.log(`${r.id.padEnd(16)} ${r.arch.padEnd(6)} ${r.boot.padEnd(18)} ${r.media.join(',').padEnd(16)} ${r.name}`);
      }
    });
  boards
    .command('show <id>')
    .description('print one board definition (after defaults are applied)')
    .option('--json', 'machine-readable output')
    .action((id: string, o: { json?: boolean }) => {
      const b = loadBoard(id).value;
      if (o.json) printJson(b);
      else process.stdout.write(stringify(b));
    });
  boards
    .command('check <file...>')
    .description('validate board files a vendor wrote; every problem with file:line and field')
    .option('--json', 'machine-readable output')
    .action((files: string[], o: { json?: boolean }) => {
      const results = files.map((file) => {
        try {
          const b = loadBoardFile(file).value;
          return { file, ok: true, id: b.id, problems: [] as string[] };
        } catch (err) {
          if (err instanceof SpecError) return { file, ok: false, problems: err.message.split('\n') };
          if (err instanceof EdgekitError) return { file, ok: false, problems: [err.message] };
          throw err;
        }
      });
      if (o.json) printJson(results);
      else for (const r of results) console.log(r.ok ? `${r.file}: ok (board ${r.id})` : r.problems.join('\n'));
      if (results.some((r) => !r.ok)) throw new EdgekitError(`${results.filter((r) => !r.ok).length} of ${results.length} board file(s) have problems`);
    });
}
