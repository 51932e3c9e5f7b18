/**
 * `edgekit build`: image spec + board -> disk image, block map, signed manifest, lock file, SBOM.
 *
 * Every byte is written by edgekit itself (no root, no mount, no loop device), into a temporary
 * folder; the outputs are renamed into place only when all of them are complete.
 */
import type { KeyObject } from 'node:crypto';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import { loadPrivateKey } from '../sign/keys.js';
import { signDocument } from '../sign/signed.js';
import type { LayoutPlan } from '../image/layout.js';
import { assembleImage, type PayloadFile } from '../image/assemble.js';
import { formatBmap, mappedBlocks } from '../image/bmap.js';
import { MANIFEST_FORMAT, type ImageManifest, type SlotBoot } from '../image/manifest.js';
import { writeCpio } from '../fs/cpio.js';
import { writeSquashfs } from '../fs/squashfs.js';
import { appendVerityHashTree } from '../fs/verity.js';
import { writeFat } from '../fs/fat.js';
import { Tree } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import { noProgress, type Progress } from '../util/progress.js';
import type { PackageSet } from './packages-step.js';
import type { KernelParts } from './kernel-step.js';
import { prepareTrees } from './prepare-trees.js';
import { bootPartitionTree } from './boot-step.js';
import { stableBytes, stableUint32 } from './ids.js';
import { formatLock, LOCK_FORMAT, readLock, type BuildLock } from './lock.js';
import { spdxDocument } from './sbom.js';

export interface BuildOptions {
  spec: string;
  board: string;
  key: string;
  outDir: string;
  /** A folder of board files to look in besides the shipped ones (vendors' boards). */
  boardsDir?: string;
  mirror?: string;
  /** Pin every package to this lock file. */
  lock?: string;
  zstd?: boolean;
  /** Use only the cache: the last verified InRelease and indices, cached .debs (or a complete --lock). */
  offline?: boolean;
  /** Seconds since the epoch stamped on every file; default $SOURCE_DATE_EPOCH, else 0. */
  sourceDateEpoch?: number;
  progress?: Progress;
}

export interface BuildResult {
  image: string;
  bmap: string;
  manifest: string;
  lock: string;
  sbom: string;
  zst?: string;
  size: number;
  mappedBytes: number;
  packages: number;
  manifestDoc: ImageManifest;
}

export async function build(opts: BuildOptions): Promise<BuildResult> {
  const progress = opts.progress ?? noProgress;
  const epoch = opts.sourceDateEpoch ?? epochFromEnv();
  const lock = opts.lock ? await readLock(opts.lock) : undefined;
  let key: KeyObject | undefined;
  const { spec, board, kernel, plan, pkgs, kp, trees } = await prepareTrees({
    spec: opts.spec,
    board: opts.board,
    boardsDir: opts.boardsDir,
    mirror: opts.mirror,
    lock,
    offline: opts.offline,
    epoch,
    progress,
    beforeDownload: async () => {
      key = await loadPrivateKey(opts.key);
    },
  });

  await mkdir(opts.outDir, { recursive: true });
  const work = await mkdtemp(join(opts.outDir, '.build-'));
  try {
    return await writeOutputs({ opts, spec, board, kernelCmdline: kernel.cmdline, plan, pkgs, kp, trees, work, epoch, key: key!, progress });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

function epochFromEnv(): number {
  const v = process.env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return 0;
  if (!/^\d+$/.test(v)) throw new EdgekitError(`SOURCE_DATE_EPOCH=${v}: not a number of seconds`);
  return Number(v);
}

interface OutputInputs {
  opts: BuildOptions;
  spec: ImageSpec;
  board: Board;
  kernelCmdline: string[];
  plan: LayoutPlan;
  pkgs: PackageSet;
  kp: KernelParts;
  trees: { root: Tree; initrd: Tree };
  work: string;
  epoch: number;
  key: KeyObject;
  progress: Progress;
}

async function writeOutputs(x: OutputInputs): Promise<BuildResult> {
  const { spec, board, plan, work, epoch, progress } = x;
  const id = [spec.name, spec.version, board.id];
  const payloads: PayloadFile[] = [];

  progress({ phase: 'write', detail: 'initramfs' });
  const initrdPath = join(work, 'initrd.img');
  await writeCpio(x.trees.initrd, initrdPath, { mtime: epoch, compress: 'gzip' });

  const cmdline = [
    `console=${board.console.device},${board.console.baud}`,
    ...x.kernelCmdline,
    ...board.cmdline,
    ...spec.cmdline,
    // Under U-Boot the A/B script appends edgekit.slot=<slot> itself, so one cmdline.txt serves any slot.
    ...(board.boot.firmware === 'rpi' && board.boot.loader === 'uboot' ? [] : ['edgekit.slot=a']),
  ];
  let slotA: SlotBoot;
  if (spec.root === 'disk') {
    progress({ phase: 'write', detail: 'root filesystem (squashfs)' });
    const rootPath = join(work, 'system-a.img');
    const sq = await writeSquashfs(x.trees.root, rootPath, { mtime: epoch, compression: spec.rootCompression });
    const verity = await appendVerityHashTree(rootPath, { dataSize: sq.size, salt: stableBytes('verity-salt', ...id) });
    const part = plan.partitions.find((p) => p.role === 'system-a')!;
    if (verity.totalSize > part.size) {
      throw new EdgekitError(`root filesystem (${verity.totalSize} bytes with its hash tree) does not fit the ${part.size}-byte system partition of board ${board.id}`);
    }
    cmdline.push(`edgekit.verity=${verity.rootHash}:${verity.salt}:${verity.dataBlocks}:${verity.hashOffset / 4096}`);
    payloads.push({ role: 'system-a', name: 'system-a', path: rootPath, format: 'squashfs', verity });
    slotA = { kernel: 'slot-a/vmlinuz', initrd: 'slot-a/initrd.img', cmdline: cmdline.join(' '), root: 'disk', rootPayload: 'system-a' };
  } else {
    slotA = { kernel: 'slot-a/vmlinuz', initrd: 'slot-a/initrd.img', cmdline: cmdline.join(' '), root: 'ram' };
  }

  progress({ phase: 'write', detail: 'boot partition' });
  const bootTree = await bootPartitionTree({ board, spec, kp: x.kp, pkgs: x.pkgs, slotA, initrdPath, tries: board.update.tries, epoch });
  const bootPart = plan.partitions.find((p) => p.role === 'boot')!;
  const bootPath = join(work, 'boot.fat');
  const fat = await writeFat(bootTree.tree, bootPath, { size: bootPart.size, label: board.boot.firmware === 'uefi' ? 'ESP' : 'BOOT', volumeId: stableUint32('boot', ...id), mtime: epoch, partitionOffset: bootPart.start });
  // Slot B's kernel and initramfs go on the same partition at the first update: keep room for them.
  const slotBytes = fat.files.filter((f) => f.path.startsWith('slot-a/')).reduce((n, f) => n + Math.ceil(f.length / fat.clusterSize) * fat.clusterSize, 0);
  const free = (fat.clusterCount - fat.usedClusters) * fat.clusterSize;
  if (free < slotBytes) {
    throw new EdgekitError(`boot partition of board ${board.id} (${bootPart.size} bytes) has no room for slot B: it needs ${slotBytes} more bytes than the ${free} left`);
  }
  payloads.push({ role: 'boot', name: 'boot', path: bootPath, format: 'fat' });

  const configPart = plan.partitions.find((p) => p.role === 'config')!;
  const configPath = join(work, 'config.fat');
  await writeFat(configTree(), configPath, { size: configPart.size, label: 'CONFIG', volumeId: stableUint32('config', ...id), mtime: epoch, partitionOffset: configPart.start });
  payloads.push({ role: 'config', name: 'config', path: configPath, format: 'fat', unsigned: true });

  progress({ phase: 'write', detail: 'disk image' });
  const name = `${spec.name}-${board.id}`;
  const tmpImage = join(work, `${name}.img`);
  const partial: Omit<ImageManifest, 'image' | 'partitions' | 'regions' | 'payloads'> = {
    format: MANIFEST_FORMAT,
    name: spec.name,
    version: spec.version,
    board: board.id,
    arch: board.arch,
    sourceDateEpoch: epoch,
    slots: { a: slotA, b: null },
    bootchooser: board.update.bootchooser,
    kernel: { package: x.kp.package.name, version: x.kp.package.version, image: x.kp.image.path, sha256: bootTree.kernelSha256 },
    packages: x.pkgs.all.map((p) => ({ name: p.name, version: p.version, arch: p.arch, sha256: p.sha256, ...(p.source ? { source: p.source } : {}) })),
  };
  const assembled = await assembleImage({
    path: tmpImage,
    plan,
    payloads,
    ids: id,
    sign: (m) => signDocument(m, x.key),
    manifest: partial,
  });

  // All outputs are complete in the work folder; move them into place together.
  const out = (ext: string) => join(x.opts.outDir, `${name}${ext}`);
  const bmapText = formatBmap(assembled.blockMap);
  const lock: BuildLock = { format: LOCK_FORMAT, suite: spec.debian.suite, arch: board.arch, packages: x.pkgs.all };
  const imageSha = assembled.imageSha256;
  await writeFile(join(work, 'bmap'), bmapText);
  await writeFile(join(work, 'manifest'), JSON.stringify(assembled.signedManifest, null, 2) + '\n');
  await writeFile(join(work, 'lock'), formatLock(lock));
  await writeFile(join(work, 'sbom'), JSON.stringify(spdxDocument(assembled.signedManifest.signed, imageSha), null, 2) + '\n');
  let zst: string | undefined;
  if (x.opts.zstd) {
    progress({ phase: 'compress', detail: `${name}.img.zst` });
    await zstdCompress(tmpImage, join(work, 'zst'));
  }
  await rename(tmpImage, out('.img'));
  await rename(join(work, 'bmap'), out('.bmap'));
  await rename(join(work, 'manifest'), out('.manifest.json'));
  await rename(join(work, 'lock'), out('.lock.json'));
  await rename(join(work, 'sbom'), out('.spdx.json'));
  if (x.opts.zstd) {
    zst = out('.img.zst');
    await rename(join(work, 'zst'), zst);
  }
  return {
    image: out('.img'),
    bmap: out('.bmap'),
    manifest: out('.manifest.json'),
    lock: out('.lock.json'),
    sbom: out('.spdx.json'),
    zst,
    size: plan.diskSize,
    mappedBytes: mappedBlocks(assembled.blockMap) * assembled.blockMap.blockSize,
    packages: x.pkgs.all.length,
    manifestDoc: assembled.signedManifest.signed,
  };
}

/** The config partition ships with a README; the flasher writes per-device settings beside it. */
function configTree(): Tree {
  const t = new Tree();
  t.file(
    'README.TXT',
    [
      'edgekit per-device settings. This partition is not signed: it is written at flash time',
      '(edgekit flash --set key=value) and read at boot. Nothing here is executed.',
      '',
      '  hostname            the device hostname',
      '  wifi.conf           wifi credentials',
      '  authorized_keys     extra ssh public keys',
      '  device-id           the device identity',
      '  provisioning-token  a short-lived token for the fleet server',
      '',
    ].join('\r\n'),
  );
  return t;
}

async function zstdCompress(src: string, dst: string): Promise<void> {
  // Node 20 has no zstd; the zstd tool is fast, multi-threaded and on every Debian system.
  await new Promise<void>((resolve, reject) => {
    const p = spawn('zstd', ['-q', '-f', '-T0', '-6', '--sparse', src, '-o', dst], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', (e) => reject(new EdgekitError(`zstd: ${e.message} (install the zstd package for --zstd)`)));
    p.on('close', (code) => (code === 0 ? resolve() : reject(new EdgekitError(`zstd failed: ${err.trim().split('\n')[0]}`))));
  });
}
