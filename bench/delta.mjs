/**
 * Delta benchmark: the bytes a device downloads for a real point update of its root, and what
 * making and applying the delta costs, for edgekit's delta beside xdelta3, zstd --patch-from,
 * bsdiff and casync on the same pair. Everything is measured when it runs. See bench/README.md.
 *
 * The pair: a gateway-like spec (busybox-static + nodejs, root on disk) for qemu-arm64, built twice
 * with edgekit: v1 pinned to the packages of the suite alone, v2 to the suite with its -updates
 * and -security suites (what `edgekit build` picks). The kernel is the same in both.
 */
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { hasCommand, runCommand, runShell } from './lib/run-command.mjs';
import { timedProcess } from './lib/timed-process.mjs';
import { bytes, formatTable, ratio, seconds } from './lib/ratio-table.mjs';

const REPO = dirname(dirname(fileURLToPath(import.meta.url)));
const dist = (p) => import(join(REPO, 'dist', p));
const { openArchive, defaultMirror, defaultSecurityMirror } = await dist('packages/index.js');
const { groupNames, SCRIPT_ONLY_DEPENDENCIES } = await dist('build/packages-step.js');
const { loadImageSpec } = await dist('spec/image-spec.js');
const { loadBoard } = await dist('spec/board.js');
const { loadKernel } = await dist('spec/kernel.js');
const { loadOverlay } = await dist('spec/overlay.js');
const { makeDelta } = await dist('ota/delta/index.js');

/** The suites tried in turn when --suite is not given. */
const SUITES = ['trixie', 'bookworm'];
const { values: args } = parseArgs({
  options: {
    suite: { type: 'string' },
    board: { type: 'string', default: 'qemu-arm64' },
    'skip-bsdiff': { type: 'boolean', default: false },
    compression: { type: 'string', default: 'lz4' },
    keep: { type: 'boolean', default: false },
    'apply-runs': { type: 'string', default: '7' },
    help: { type: 'boolean', default: false },
  },
});
/** The suite v1 is taken from (set when the pair is found). */
let suite = args.suite ?? SUITES[0];
if (args.help) {
  console.log(`usage: bench/delta [--suite S] [--board B] [--compression C] [--skip-bsdiff] [--apply-runs N] [--keep]
  --suite S       Debian suite of v1; v2 adds S-updates and S-security (default: trixie, or
                  bookworm when trixie's point release already took in its updates)
  --board B       board to build for (default qemu-arm64)
  --compression C the root's squashfs compression: lz4 (edgekit's default), gzip or none
  --skip-bsdiff   skip bsdiff on the whole cpio (about 90 s and 1 GB of memory)
  --apply-runs N  edgekit's and xdelta3's applies on the payload, run in turn N times each;
                  their medians are what the table and the goal compare (default 7)
  --keep          keep the work folder and print where it is`);
  process.exit(0);
}
const applyRuns = Number(args['apply-runs']);
if (!Number.isInteger(applyRuns) || applyRuns < 1) {
  console.error(`bench/delta: --apply-runs ${args['apply-runs']} is not a whole number of at least 1`);
  process.exit(2);
}
const say = (msg) => process.stderr.write(`bench: ${msg}\n`);
const CLI = join(REPO, 'bin/edgekit.js');
const work = await mkdtemp(join(tmpdir(), 'edgekit-delta-bench-'));
const started = performance.now();

function specText(version) {
  return `name: gateway
version: "${version}"
debian:
  suite: ${suite}
root: disk
rootCompression: ${args.compression}
packages: [busybox-static, nodejs]
overlays: [ssh]
hostname: gateway
network:
  dhcp: [eth0]
users:
  - name: admin
    authorizedKeys:
      - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyReplaceWithYourOwnPublicKeyxxxxxx admin@example
`;
}

/** Lock files for v1 (the suite alone) and v2 (with -updates and -security); fails if they agree. */
async function pinnedLocks(specPath) {
  const spec = loadImageSpec(specPath).value;
  const board = loadBoard(args.board).value;
  const kernel = loadKernel(spec.kernel ?? board.kernel).value;
  const names = groupNames(spec, board, kernel, spec.overlays.flatMap((o) => loadOverlay(o).packages));
  const mirror = await defaultMirror();
  const securityMirror = await defaultSecurityMirror(mirror);
  const open = (suites) => openArchive({ mirror, securityMirror, suite: spec.debian.suite, suites, components: spec.debian.components, arch: board.arch });
  const base = open([suite]);
  const full = open([suite, `${suite}-updates`, `${suite}-security`]);
  const resolveAll = async (archive, groups) => {
    const out = new Map();
    for (const g of groups) {
      const excludes = g === 'kernel' || g === 'boot' ? SCRIPT_ONLY_DEPENDENCIES : [];
      for (const p of await archive.resolve(names[g], { excludes })) if (!out.has(p.name)) out.set(p.name, p);
    }
    return out;
  };
  const v2 = await resolveAll(full, ['root', 'initrd', 'kernel', 'boot']);
  const v1 = await resolveAll(base, ['root', 'initrd']);
  for (const [n, p] of await resolveAll(full, ['kernel', 'boot'])) if (!v1.has(n)) v1.set(n, p);
  const changed = [...v2.values()].filter((p) => v1.get(p.name) && v1.get(p.name).version !== p.version);
  const added = [...v2.keys()].filter((n) => !v1.has(n));
  const lock = (m) => JSON.stringify({ format: 'edgekit-lock/1', suite, arch: board.arch, packages: [...m.values()] }, null, 2);
  return { v1: lock(v1), v2: lock(v2), changed: changed.map((p) => ({ name: p.name, from: v1.get(p.name).version, to: p.version, suite: p.suite })), added };
}

async function buildRelease(version, lock, key) {
  const dir = join(work, `v${version}`);
  await mkdir(dir, { recursive: true });
  const spec = join(dir, 'gateway.yml');
  await writeFile(spec, specText(version));
  await writeFile(join(dir, 'lock.json'), lock);
  const t0 = performance.now();
  const { stdout } = await runCommand('node', [CLI, 'build', spec, '--board', args.board, '--key', key, '-o', join(dir, 'out'), '--lock', join(dir, 'lock.json'), '--json']);
  say(`built v${version} in ${seconds((performance.now() - t0) / 1000)}`);
  const result = JSON.parse(stdout);
  const manifest = JSON.parse(await readFile(result.manifest, 'utf8')).signed;
  const p = manifest.payloads.find((x) => x.partition === 'system-a');
  const payload = join(dir, 'system.img');
  await pipeline(createReadStream(result.image, { start: p.offset, end: p.offset + p.size - 1 }), createWriteStream(payload));
  return { dir, payload, size: p.size, sha256: p.sha256, salt: p.verity.salt, manifest };
}

/** The uncompressed tree as a reproducible cpio archive (for the tools that diff raw content). */
async function cpioOf(rel) {
  const tree = join(rel.dir, 'tree');
  await runCommand('unsquashfs', ['-q', '-n', '-d', tree, rel.payload]);
  const out = join(rel.dir, 'root.cpio');
  await runShell('cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --reproducible --quiet > "$2"', [tree, out]);
  await rm(tree, { recursive: true, force: true });
  return out;
}

const size = async (p) => (await stat(p)).size;

async function casyncBytes(v1, v2, avg) {
  const s1 = join(work, `casync-${avg}-1`), s2 = join(work, `casync-${avg}-2`);
  const sizes = `--chunk-size=${avg / 4}:${avg}:${avg * 4}`;
  await runCommand('casync', ['make', sizes, `--store=${s1}`, join(work, `v1-${avg}.caibx`), v1]);
  const t = await timedProcess('casync', ['make', sizes, `--store=${s2}`, join(work, `v2-${avg}.caibx`), v2]);
  const chunks = async (dir) => {
    const m = new Map();
    for (const sub of await readdir(dir)) for (const f of await readdir(join(dir, sub))) m.set(f, await size(join(dir, sub, f)));
    return m;
  };
  const have = await chunks(s1);
  let n = 0;
  for (const [f, sz] of await chunks(s2)) if (!have.has(f)) n += sz;
  return { bytes: n + (await size(join(work, `v2-${avg}.caibx`))), make: t.seconds };
}

try {
  console.log(`edgekit delta benchmark: node ${process.version}, ${cpus().length} CPUs, load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`);
  const key = join(work, 'bench.key');
  await runCommand('node', [CLI, 'keys', 'generate', '-o', key]);
  // A point release folds the suite's updates in: until the next ones come, the suite has none to
  // measure, and the older stable suite is tried. A suite given with --suite is the only one tried.
  let locks;
  for (const candidate of args.suite ? [args.suite] : SUITES) {
    suite = candidate;
    await writeFile(join(work, 'spec.yml'), specText(1));
    locks = await pinnedLocks(join(work, 'spec.yml'));
    if (locks.changed.length) break;
    console.log(`${suite}: no package of this spec differs in ${suite}-updates/-security`);
  }
  if (locks.changed.length === 0) throw new Error(`no package differs between ${suite} and ${suite}-updates/-security for this spec: no realistic update to measure`);
  console.log(`update ${suite} -> ${suite}-security/-updates, ${args.board}:`);
  console.log(formatTable(['package', 'v1', 'v2', 'from'], locks.changed.map((c) => [c.name, c.from, c.to, c.suite])));
  if (locks.added.length) console.log(`added in v2: ${locks.added.join(', ')}`);
  const v1 = await buildRelease(1, locks.v1, key);
  const v2 = await buildRelease(2, locks.v2, key);
  console.log(`\nroot payload (squashfs ${args.compression} + dm-verity): v1 ${bytes(v1.size)}, v2 ${bytes(v2.size)}`);

  // edgekit
  const delta = join(work, 'v1-v2.delta');
  let t0 = performance.now();
  const info = await makeDelta(v1.payload, v2.payload, delta, { veritySalt: v2.salt });
  const makeSeconds = (performance.now() - t0) / 1000;
  const slot = join(work, 'slot-b.img');
  const applyOurs = () => timedProcess('node', [join(REPO, 'bench/lib/apply-delta-child.mjs'), REPO, delta, v1.payload, slot, v2.sha256, String(v2.size)]);
  const child = await applyOurs();
  const applied = JSON.parse(child.stdout.trim());
  const same = Buffer.compare(await readFile(slot), await readFile(v2.payload)) === 0;
  if (!same) throw new Error('applied slot differs from the v2 payload');
  console.log(
    `edgekit delta: ${info.changedFiles} files diffed, ${info.newFiles} sent whole; copied ${bytes(info.copiedBytes)}, rebuilt ${info.rebuiltBlocks} blocks (${bytes(info.rebuiltBytes)}), literal ${bytes(info.literalBytes)}; streams ops ${bytes(info.streams.ops)}, add ${bytes(info.streams.add)}, literal ${bytes(info.streams.literal)}; verity recomputed: ${info.verityRecomputed}`,
  );

  const rows = [];
  console.log(`edgekit apply: ${seconds(applied.seconds)} inside applyDelta, ${seconds(child.seconds)} for the whole process`);

  // xdelta3 on the payloads
  const x1 = join(work, 'xdelta-sq');
  let t = await timedProcess('xdelta3', ['-9', '-e', '-f', '-s', v1.payload, v2.payload, x1]);
  const applyXdelta = () => timedProcess('xdelta3', ['-d', '-f', '-s', v1.payload, x1, join(work, 'xd-out')]);

  // The two applies in turn, so a change in the load of a shared machine falls on both alike;
  // whole processes (node's start-up included). Medians of wall-clock and of CPU (user + system).
  const ourRuns = [], xdRuns = [];
  for (let i = 0; i < applyRuns; i++) {
    ourRuns.push(await applyOurs());
    xdRuns.push(await applyXdelta());
  }
  const median = (xs) => {
    const s = [...xs].sort((p, q) => p - q);
    return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const ourApply = median(ourRuns.map((r) => r.seconds)), ourCpu = median(ourRuns.map((r) => r.cpuSeconds));
  const xdeltaApply = median(xdRuns.map((r) => r.seconds)), xdeltaCpu = median(xdRuns.map((r) => r.cpuSeconds));
  const ourRss = Math.max(child.peakRss, ...ourRuns.map((r) => r.peakRss));
  console.log(
    `apply on the payload, ${applyRuns} runs of each in turn (medians; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}): ` +
      `edgekit ${seconds(ourApply)} wall, ${seconds(ourCpu)} CPU; xdelta3 ${seconds(xdeltaApply)} wall, ${seconds(xdeltaCpu)} CPU; ` +
      `edgekit/xdelta3 ${ratio(ourApply, xdeltaApply)} wall, ${ratio(ourCpu, xdeltaCpu)} CPU`,
  );
  rows.push({ tool: 'edgekit delta (squashfs, per-file bsdiff)', bytes: info.bytes, make: makeSeconds, apply: ourApply, cpu: ourCpu, rss: ourRss });
  rows.push({ tool: 'xdelta3 -9 (squashfs payload)', bytes: await size(x1), make: t.seconds, apply: xdeltaApply, cpu: xdeltaCpu, rss: Math.max(...xdRuns.map((r) => r.peakRss)) });
  let a;

  // zstd --patch-from on the payloads
  const z1 = join(work, 'zstd-sq');
  t = await timedProcess('zstd', ['-q', '-f', '-19', '--long=28', `--patch-from=${v1.payload}`, v2.payload, '-o', z1]);
  a = await timedProcess('zstd', ['-q', '-f', '-d', '--long=28', `--patch-from=${v1.payload}`, z1, '-o', join(work, 'zs-out')]);
  rows.push({ tool: 'zstd -19 --patch-from (squashfs payload)', bytes: await size(z1), make: t.seconds, apply: a.seconds, cpu: a.cpuSeconds, rss: a.peakRss });

  if (await hasCommand('casync')) {
    for (const avg of [16384, 65536]) {
      const c = await casyncBytes(v1.payload, v2.payload, avg);
      rows.push({ tool: `casync ${avg / 1024} KiB chunks (new chunks + index)`, bytes: c.bytes, make: c.make, apply: NaN, cpu: NaN, rss: NaN });
    }
  }

  // The uncompressed trees
  const c1 = await cpioOf(v1), c2 = await cpioOf(v2);
  console.log(`uncompressed trees (cpio newc): v1 ${bytes(await size(c1))}, v2 ${bytes(await size(c2))}`);
  const x2 = join(work, 'xdelta-cpio');
  t = await timedProcess('xdelta3', ['-9', '-e', '-f', '-B', String(1 << 30), '-s', c1, c2, x2]);
  a = await timedProcess('xdelta3', ['-d', '-f', '-B', String(1 << 30), '-s', c1, x2, join(work, 'xd2-out')]);
  rows.push({ tool: 'xdelta3 -9 (cpio)', bytes: await size(x2), make: t.seconds, apply: a.seconds, cpu: a.cpuSeconds, rss: a.peakRss });
  const z2 = join(work, 'zstd-cpio');
  t = await timedProcess('zstd', ['-q', '-f', '-19', '--long=28', `--patch-from=${c1}`, c2, '-o', z2]);
  a = await timedProcess('zstd', ['-q', '-f', '-d', '--long=28', `--patch-from=${c1}`, z2, '-o', join(work, 'zs2-out')]);
  rows.push({ tool: 'zstd -19 --patch-from (cpio)', bytes: await size(z2), make: t.seconds, apply: a.seconds, cpu: a.cpuSeconds, rss: a.peakRss });
  let bsdiffBytes;
  if (!args['skip-bsdiff'] && (await hasCommand('bsdiff'))) {
    const b = join(work, 'bsdiff-cpio');
    say('bsdiff on the whole cpio (slow)');
    t = await timedProcess('bsdiff', [c1, c2, b]);
    a = await timedProcess('bspatch', [c1, join(work, 'bs-out'), b]);
    bsdiffBytes = await size(b);
    rows.push({ tool: 'bsdiff (cpio)', bytes: bsdiffBytes, make: t.seconds, apply: a.seconds, cpu: a.cpuSeconds, rss: a.peakRss, makeRss: t.peakRss });
  }

  console.log('');
  console.log(
    formatTable(
      ['delta', 'bytes', 'vs bsdiff', 'make', 'apply', 'vs xdelta3 apply', 'apply CPU', 'apply peak RSS'],
      rows.map((r) => [
        r.tool,
        bytes(r.bytes),
        bsdiffBytes ? ratio(r.bytes, bsdiffBytes) : 'n/a',
        seconds(r.make),
        Number.isNaN(r.apply) ? 'n/a' : seconds(r.apply),
        Number.isNaN(r.apply) ? 'n/a' : ratio(r.apply, xdeltaApply),
        Number.isNaN(r.cpu) ? 'n/a' : seconds(r.cpu),
        Number.isNaN(r.rss) ? 'n/a' : bytes(r.rss),
      ]),
    ),
  );
  const ours = rows[0];
  console.log(`\ngoals: bytes <= 2x bsdiff: ${bsdiffBytes ? (ours.bytes <= 2 * bsdiffBytes ? 'met' : 'MISSED') : 'not measured'}` +
    `; apply peak RSS <= 96 MiB: ${ours.rss <= 96 * 1048576 ? 'met' : 'MISSED'}` +
    `; apply no slower than xdelta3 on the payload (median wall-clock): ${ours.apply <= xdeltaApply ? 'met' : 'MISSED'}` +
    ` (CPU: ${ratio(ourCpu, xdeltaCpu)})`);
  if (rows.at(-1).makeRss) console.log(`bsdiff on the cpio peaked at ${bytes(rows.at(-1).makeRss)} while making the patch`);
  console.log(`\nbenchmark took ${seconds((performance.now() - started) / 1000)} (load average at the end ${loadavg()[0].toFixed(1)})`);
} finally {
  if (args.keep) say(`work folder kept: ${work}`);
  else await rm(work, { recursive: true, force: true });
}
