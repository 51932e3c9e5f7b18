/**
 * Build benchmark: edgekit's payload writers against the host tools that make the same formats,
 * on the trees a real build assembles, and the minimal image's size and build time.
 *
 * Everything is measured when it runs; nothing here is a stored figure. Run through bench/build
 * (which checks for the host tools) after `npm run build`. See bench/README.md.
 */
import { mkdtemp, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { medianTime } from './lib/median-timer.mjs';
import { hasCommand, runCommand, runShell } from './lib/run-command.mjs';
import { materializeTree } from './lib/materialize-tree.mjs';
import { countNonZeroBlocks } from './lib/nonzero-blocks.mjs';
import { bytes, formatTable, ratio, seconds } from './lib/ratio-table.mjs';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const dist = (p) => import(join(REPO, 'dist', p));
const { prepareTrees } = await dist('build/prepare-trees.js');
const { bootPartitionTree } = await dist('build/boot-step.js');
const { writeSquashfs } = await dist('fs/squashfs.js');
const { writeCpio } = await dist('fs/cpio.js');
const { writeFat } = await dist('fs/fat.js');

/** The issue's goal for a warm-cache build of examples/minimal.yml. */
const WARM_BUILD_GOAL_SECONDS = 10;
const BOARD = 'qemu-x86_64';
const TREE_SPEC = join(REPO, 'examples/gateway.yml');
const IMAGE_SPEC = join(REPO, 'examples/minimal.yml');

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '3' },
    'cold-runs': { type: 'string', default: '1' },
    'warm-runs': { type: 'string', default: '3' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log(`usage: bench/build [--runs N] [--cold-runs N] [--warm-runs N] [--keep]
  --runs N       timed runs per payload writer and host tool (median reported; default 3)
  --cold-runs N  builds of minimal.yml with an empty package cache (default 1; 0 skips them and
                 the warm runs then use your own cache)
  --warm-runs N  builds of minimal.yml with the cache filled (default 3)
  --keep         keep the work folder (trees, outputs) and print where it is`);
  process.exit(0);
}
const RUNS = positive(args.runs, '--runs');
const COLD_RUNS = positive(args['cold-runs'], '--cold-runs', true);
const WARM_RUNS = positive(args['warm-runs'], '--warm-runs');

function positive(v, name, zeroOk = false) {
  const n = Number(v);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) {
    console.error(`bench/build: ${name} ${v}: not a whole number${zeroOk ? '' : ' above 0'}`);
    process.exit(2);
  }
  return n;
}

const say = (msg) => process.stderr.write(`bench: ${msg}\n`);
const started = performance.now();
const work = await mkdtemp(join(tmpdir(), 'edgekit-bench-'));
try {
  // The load average is printed because every figure below is wall-clock time on a possibly shared machine.
  const load = loadavg().map((l) => l.toFixed(1)).join(' ');
  console.log(`edgekit build benchmark: node ${process.version}, ${cpus().length} CPUs, load average ${load}, median of ${RUNS} runs per writer\n`);
  await payloadWriters();
  await minimalImage();
  console.log(`\nbenchmark took ${seconds((performance.now() - started) / 1000)} (load average at the end ${loadavg()[0].toFixed(1)})`);
} finally {
  if (args.keep) say(`work folder kept: ${work}`);
  else await rm(work, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------

async function payloadWriters() {
  say(`assembling the trees of examples/gateway.yml on ${BOARD} (package cache: ${process.env.EDGEKIT_CACHE || 'default'})`);
  const t0 = performance.now();
  const prepared = await prepareTrees({ spec: TREE_SPEC, board: BOARD });
  const prepSeconds = (performance.now() - t0) / 1000;
  const { root, initrd } = prepared.trees;

  // The ESP as the build makes it: kernel, the first-stage initramfs (written by our cpio writer,
  // outside the clock), systemd-boot and its entries.
  const initrdImg = join(work, 'initrd.img');
  await writeCpio(initrd, initrdImg, { mtime: 0, compress: 'gzip' });
  const slotA = { kernel: 'slot-a/vmlinuz', initrd: 'slot-a/initrd.img', cmdline: 'console=ttyS0,115200 edgekit.slot=a', root: 'disk', rootPayload: 'system-a' };
  const esp = await bootPartitionTree({
    board: prepared.board, spec: prepared.spec, kp: prepared.kp, pkgs: prepared.pkgs,
    slotA, initrdPath: initrdImg, tries: prepared.board.update.tries, epoch: 0,
  });
  const bootPart = prepared.plan.partitions.find((p) => p.role === 'boot');

  say('writing the trees out as files for the host tools');
  const dirs = { root: join(work, 'tree-root'), initrd: join(work, 'tree-initrd'), esp: join(work, 'tree-esp') };
  const skipped = [
    ...(await materializeTree(root, dirs.root)).skipped,
    ...(await materializeTree(initrd, dirs.initrd)).skipped,
    ...(await materializeTree(esp.tree, dirs.esp)).skipped,
  ];

  console.log(`Trees of examples/gateway.yml on ${BOARD} (assembled in ${seconds(prepSeconds)} from the package cache):`);
  console.log(`  root       ${describeTree(root)}`);
  console.log(`  initramfs  ${describeTree(initrd)}`);
  console.log(`  ESP        ${describeTree(esp.tree)}; partition ${bytes(bootPart.size)}`);
  if (skipped.length) console.log(`  (${skipped.length} device nodes/fifos left out of the host tools' copy: ${skipped.slice(0, 3).join(', ')}...)`);
  console.log('');

  const out = (name) => join(work, name);
  const remove = (path) => () => rm(path, { force: true });
  const fileSize = async (path) => (await stat(path)).size;
  const rows = [];
  const row = async (label, ours, host) => {
    say(`timing ${label}: ${host.tool}`);
    // One measurement of ours serves every row it is compared in (squashfs vs mksquashfs and erofs).
    ours.timed ??= await medianTime(RUNS, ours.run, remove(ours.path));
    const o = ours.timed;
    const h = await medianTime(RUNS, host.run, remove(host.path));
    const os = await ours.size(ours.path);
    const hs = await host.size(host.path);
    rows.push([label, seconds(o.median), host.tool, seconds(h.median), ratio(o.median, h.median), bytes(os), bytes(hs), ratio(os, hs)]);
    return { ours: o.median, host: h.median };
  };

  // squashfs: both gzip level 9, 128 KiB blocks, fragments; sizes include the 4 KiB padding.
  const sqOurs = { path: out('ours.sqfs'), run: () => writeSquashfs(root, out('ours.sqfs'), { mtime: 0, compression: 'gzip' }), size: fileSize };
  await row('squashfs gzip, root', sqOurs, {
    tool: 'mksquashfs -comp gzip -noappend',
    path: out('host.sqfs'),
    run: () => runCommand('mksquashfs', [dirs.root, out('host.sqfs'), '-comp', 'gzip', '-noappend', '-quiet', '-no-progress']),
    size: fileSize,
  });
  const notes = [];
  if (await hasCommand('mkfs.erofs')) {
    const compressor = (await erofsCompressors()).includes('deflate') ? 'deflate' : 'lz4hc';
    await row('squashfs gzip, root', sqOurs, {
      tool: `mkfs.erofs -z${compressor}`,
      path: out('host.erofs'),
      run: () => runCommand('mkfs.erofs', [`-z${compressor}`, '--quiet', out('host.erofs'), dirs.root]),
      size: fileSize,
    });
    if (compressor !== 'deflate') notes.push(`this mkfs.erofs has no deflate: ${compressor} trades size for speed, so the erofs row is not like for like`);
  } else {
    say('mkfs.erofs not found (package erofs-utils): erofs row skipped');
  }

  // FAT: same size, type and label; mkfs.vfat then mcopy -s copies the ESP's folders in.
  let fatType = 'fat32';
  const fatOurs = {
    path: out('ours.fat'),
    run: async () => {
      const layout = await writeFat(esp.tree, out('ours.fat'), { size: bootPart.size, label: 'ESP', volumeId: 0x12345678, mtime: 0, partitionOffset: bootPart.start });
      fatType = layout.fatType;
      return layout;
    },
    size: async (p) => (await countNonZeroBlocks(p)) * 4096,
  };
  // The type our writer picks from the size decides mkfs.vfat's -F, so run ours first once.
  await fatOurs.run();
  await row('FAT, ESP', fatOurs, {
    tool: `mkfs.vfat -F ${fatType.replace(/^fat/, '')} + mcopy -s`,
    path: out('host.fat'),
    run: () =>
      runShell('truncate -s "$2" "$1" && mkfs.vfat -F "$3" -n ESP -i 12345678 "$1" >/dev/null && cd "$4" && mcopy -s -Q -i "$1" ./* ::/', [
        out('host.fat'), String(bootPart.size), fatType.replace(/^fat/, ''), dirs.esp,
      ], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } }),
    size: async (p) => (await countNonZeroBlocks(p)) * 4096,
  });

  // cpio newc + gzip -9, on the root tree and on the real first-stage initramfs.
  for (const [label, tree, dir] of [['cpio+gzip, root', root, dirs.root], ['cpio+gzip, initramfs', initrd, dirs.initrd]]) {
    const name = label.replace(/\W+/g, '-');
    await row(label,
      { path: out(`ours-${name}`), run: () => writeCpio(tree, out(`ours-${name}`), { mtime: 0, compress: 'gzip' }), size: fileSize },
      {
        tool: 'find | cpio -o -H newc | gzip -9',
        path: out(`host-${name}`),
        run: () => runShell('cd "$2" && find . | cpio -o -H newc --quiet | gzip -9 > "$1"', [out(`host-${name}`), dir]),
        size: fileSize,
      });
  }

  console.log(`Payload writers (median of ${RUNS}; ratio = ours / host, below 1.00x means ours is faster or smaller;`);
  console.log(`FAT size = bytes in non-zero 4 KiB blocks of the ${bytes(bootPart.size)} image; other sizes = file size):`);
  console.log(formatTable(['payload', 'ours', 'host tool', 'host', 'time ratio', 'ours size', 'host size', 'size ratio'], rows));
  for (const n of notes) console.log(`note: ${n}`);
}

function describeTree(tree) {
  const count = { file: 0, dir: 0, symlink: 0, other: 0 };
  let total = 0;
  for (const e of tree.list()) {
    count[e.type in count ? e.type : 'other']++;
    if (e.type === 'file') total += e.content.kind === 'buffer' ? e.content.data.length : e.content.size;
  }
  return `${tree.size} entries (${count.file} files, ${count.dir} dirs, ${count.symlink} symlinks${count.other ? `, ${count.other} other` : ''}), ${bytes(total)} of file data`;
}

async function erofsCompressors() {
  const { stdout, stderr } = await runShell('mkfs.erofs --help 2>&1 || true');
  const m = /Available compressors are: (.*)/.exec(stdout + stderr);
  return m ? m[1].split(/[,\s]+/).filter(Boolean) : [];
}

// ---------------------------------------------------------------------------------------------

async function minimalImage() {
  const cli = join(REPO, 'bin/edgekit.js');
  const key = join(work, 'bench.key');
  await runCommand(process.execPath, [cli, 'keys', 'generate', '-o', key]);
  const outDir = join(work, 'out-minimal');
  const buildOnce = (cacheDir) => () =>
    runCommand(process.execPath, [cli, 'build', IMAGE_SPEC, '--board', BOARD, '--key', key, '-o', outDir], {
      cwd: REPO,
      env: cacheDir ? { ...process.env, EDGEKIT_CACHE: cacheDir } : process.env,
    });
  const cleanOut = () => rm(outDir, { recursive: true, force: true });

  const rows = [];
  let cache;
  if (COLD_RUNS > 0) {
    // Each cold run gets its own empty cache: everything is downloaded and unpacked again.
    const cold = [];
    for (let i = 0; i < COLD_RUNS; i++) {
      cache = join(work, `cache-${i}`);
      await mkdir(cache);
      say(`cold build ${i + 1}/${COLD_RUNS} of examples/minimal.yml (empty cache: downloads everything)`);
      cold.push((await medianTime(1, buildOnce(cache), cleanOut)).median);
    }
    rows.push([`cold cache (${COLD_RUNS === 1 ? '1 run' : `median of ${COLD_RUNS}`})`, seconds(cold.sort((a, b) => a - b)[cold.length >> 1]), '']);
  }
  say(`warm builds of examples/minimal.yml (${WARM_RUNS} runs, cache: ${cache ?? process.env.EDGEKIT_CACHE ?? 'default'})`);
  const warm = await medianTime(WARM_RUNS, buildOnce(cache), cleanOut);
  const met = warm.median <= WARM_BUILD_GOAL_SECONDS;
  rows.push([`warm cache (median of ${WARM_RUNS})`, seconds(warm.median), `goal <= ${WARM_BUILD_GOAL_SECONDS} s: ${met ? 'met' : 'NOT met'}`]);

  const image = join(outDir, `minimal-${BOARD}.img`);
  const size = (await stat(image)).size;
  const mapped = (await countNonZeroBlocks(image)) * 4096;
  const bmapText = await readFile(join(outDir, `minimal-${BOARD}.bmap`), 'utf8').catch(() => '');
  const bmapBlocks = /<MappedBlocksCount>\s*(\d+)/.exec(bmapText);
  const bmapNote = bmapBlocks ? `(the .bmap maps ${bytes(Number(bmapBlocks[1]) * 4096)})` : '';

  console.log(`\nexamples/minimal.yml on ${BOARD}, each build a whole \`edgekit build\` process:`);
  console.log(formatTable(['build', 'time', ''], rows));
  console.log(`image size ${bytes(size)}; mapped (non-zero 4 KiB blocks, scanned) ${bytes(mapped)} = ${((mapped / size) * 100).toFixed(1)}% ${bmapNote}`);
}
