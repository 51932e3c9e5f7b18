/**
 * Flash benchmark: `edgekit flash` against `dd bs=4M conv=fsync`, `bmaptool copy`, and `bmaptool
 * copy` followed by a page-cache-bypassing read-back of its mapped ranges, from a raw and a .zst
 * source, to a file target. The image is built by edgekit here (bench/lib/flash-image.mjs).
 * Everything is measured when it runs; nothing is a stored figure. See bench/README.md.
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildFlashBenchImage } from './lib/flash-image.mjs';
import { median, medianTime } from './lib/median-timer.mjs';
import { runCommand, runShell } from './lib/run-command.mjs';
import { bytes, formatTable, ratio, seconds } from './lib/ratio-table.mjs';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const CLI = join(REPO, 'bin/edgekit.js');
const READBACK = join(REPO, 'bench/lib/direct-readback.sh');

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    'payload-mib': { type: 'string', default: '320' },
    work: { type: 'string' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: bench/flash [--runs N] [--payload-mib N] [--work DIR] [--keep]
  --runs N         timed runs per tool and source (median reported; default 3)
  --payload-mib N  MiB of random data in the image's root filesystem (default 320)
  --work DIR       work folder; an image already built there is reused (implies --keep)
  --keep           keep the work folder and print where it is`);
  process.exit(0);
}
const RUNS = Number(args.runs);
const PAYLOAD = Number(args['payload-mib']);
for (const [name, v] of [['--runs', RUNS], ['--payload-mib', PAYLOAD]]) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`bench/flash: ${name}: not a whole number above 0`);
    process.exit(2);
  }
}

const say = (msg) => process.stderr.write(`bench: ${msg}\n`);
const work = args.work ?? (await mkdtemp(join(tmpdir(), 'edgekit-flash-bench-')));
const keep = args.keep || !!args.work;
try {
  console.log(`edgekit flash benchmark: node ${process.version}, ${cpus().length} CPUs, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}, median of ${RUNS} runs\n`);
  const img = await image();
  const size = (await stat(img.image)).size;
  console.log(`image: ${bytes(size)}, mapped ${bytes(img.mappedBytes)} (.bmap), .zst ${bytes((await stat(img.zst)).size)}`);
  console.log(`target: a file in ${work}\n`);
  const target = join(work, 'target.img');
  const sources = { raw: img.image, zst: img.zst };
  const tools = {
    'edgekit flash (read-back)': (s) => runCommand('node', [CLI, 'flash', s, '--to', target, '--pubkey', img.pub]),
    'edgekit flash --no-verify': (s) => runCommand('node', [CLI, 'flash', s, '--to', target, '--pubkey', img.pub, '--no-verify']),
    // The same engine called in-process: the CLI rows minus node's start and module loading.
    'flashImage() in-process (read-back)': (s) => library(s, true),
    'flashImage() in-process, no read-back': (s) => library(s, false),
    'bmaptool copy': (s) => runCommand('bmaptool', ['-q', 'copy', '--bmap', img.bmap, s, target]),
    'bmaptool copy + direct read-back': async (s) => {
      await runCommand('bmaptool', ['-q', 'copy', '--bmap', img.bmap, s, target]);
      await runCommand('sh', [READBACK, img.bmap, target]);
    },
    'dd bs=4M conv=fsync': (s) =>
      s.endsWith('.zst')
        ? runShell('zstd -dcq "$1" | dd of="$2" bs=4M iflag=fullblock conv=fsync status=none', [s, target])
        : runCommand('dd', [`if=${s}`, `of=${target}`, 'bs=4M', 'conv=fsync', 'status=none']),
  };
  const { openSource } = await import(join(REPO, 'dist/flash/source.js'));
  const { flashImage } = await import(join(REPO, 'dist/flash/flash.js'));
  const { loadPublicKey } = await import(join(REPO, 'dist/sign/keys.js'));
  const publicKey = await loadPublicKey(img.pub);
  const library = async (s, verify) => {
    const [r] = await flashImage({ source: await openSource(s), targets: [target], publicKey, verify });
    if (!r.ok) throw new Error(r.error);
  };
  // What the CLI rows pay before flashing: node itself, then commander and the flash command's modules.
  const nodeStart = (await medianTime(RUNS, () => runCommand('node', ['-e', '0']))).median;
  const startup = (await medianTime(RUNS, () => runCommand('node', [CLI, 'flash', '--help']))).median;
  console.log(`start-up: node ${seconds(nodeStart)}, edgekit flash --help ${seconds(startup)}\n`);
  // Each run starts from no target and no dirty pages; the source is read once first so every
  // tool finds it in the page cache alike.
  const prepare = async () => {
    await rm(target, { force: true });
    await runCommand('sync', []);
  };
  // Runs go round the tools (one run of each, then the next round) so that a change in the load of
  // a shared machine falls on every tool alike instead of on the ones measured at that moment.
  const times = {};
  for (const [kind, s] of Object.entries(sources)) {
    await runShell('cat "$1" > /dev/null', [s]);
    const runs = Object.fromEntries(Object.keys(tools).map((tool) => [tool, []]));
    for (let round = 1; round <= RUNS; round++) {
      say(`${kind} source, round ${round} of ${RUNS}`);
      for (const [tool, step] of Object.entries(tools)) runs[tool].push(...(await medianTime(1, () => step(s), prepare)).runs);
    }
    for (const tool of Object.keys(tools)) times[`${tool}|${kind}`] = median(runs[tool]);
  }
  // Correctness of the last edgekit run is checked, not assumed.
  await prepare();
  await tools['edgekit flash (read-back)'](img.zst);
  await runCommand('node', [CLI, 'verify', target, '--pubkey', img.pub]);

  const rows = [];
  for (const tool of Object.keys(tools)) {
    const row = [tool];
    for (const kind of Object.keys(sources)) {
      const t = times[`${tool}|${kind}`];
      row.push(seconds(t), ratio(times[`edgekit flash (read-back)|${kind}`], t));
    }
    rows.push(row);
  }
  console.log(formatTable(['tool', 'raw', 'edgekit/this', '.zst', 'edgekit/this'], rows));
  console.log('\n(edgekit/this: edgekit flash with read-back over this row; below 1.00x edgekit is faster)\n');
  for (const kind of Object.keys(sources)) {
    const t = (tool) => times[`${tool}|${kind}`];
    const goals = [
      ['read-back: edgekit <= bmaptool + direct read-back', t('edgekit flash (read-back)') <= t('bmaptool copy + direct read-back')],
      ['no read-back: edgekit --no-verify <= bmaptool', t('edgekit flash --no-verify') <= t('bmaptool copy')],
      [`>= 5x faster than dd (${(t('dd bs=4M conv=fsync') / t('edgekit flash --no-verify')).toFixed(1)}x without, ${(t('dd bs=4M conv=fsync') / t('edgekit flash (read-back)')).toFixed(1)}x with read-back)`, t('dd bs=4M conv=fsync') >= 5 * t('edgekit flash --no-verify')],
    ];
    for (const [what, met] of goals) console.log(`${kind.padEnd(4)} ${met ? 'met   ' : 'MISSED'} ${what}`);
  }
  console.log(`\nload average at the end ${loadavg()[0].toFixed(1)}`);
} finally {
  if (keep) say(`work folder kept: ${work}`);
  else await rm(work, { recursive: true, force: true });
}

async function image() {
  const result = join(work, 'image.json');
  try {
    const r = JSON.parse(await (await import('node:fs/promises')).readFile(result, 'utf8'));
    say(`reusing the image in ${work}`);
    return r;
  } catch {
    say(`building a ~2 GiB image with ${PAYLOAD} MiB of random data (about a minute)`);
    const r = await buildFlashBenchImage({ repo: REPO, work: join(work, 'image'), payloadMiB: PAYLOAD, zstd: true });
    await (await import('node:fs/promises')).writeFile(result, JSON.stringify(r));
    return r;
  }
}
