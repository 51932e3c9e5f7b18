/**
 * The first half of a build: spec + board -> fetched packages and the assembled trees, with
 * nothing written out. `build()` continues from here; the benchmark (bench/build) stops here to
 * time the payload writers on the exact trees a build produces.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadBoard, type Board } from '../spec/board.js';
import { loadImageSpec, type ImageSpec } from '../spec/image-spec.js';
import { loadKernel, type Kernel } from '../spec/kernel.js';
import { loadOverlay } from '../spec/overlay.js';
import { planLayout, type LayoutPlan } from '../image/layout.js';
import { EdgekitError } from '../util/errors.js';
import { noProgress, type Progress } from '../util/progress.js';
import type { LockFile } from '../packages/types.js';
import { fetchPackages, groupNames, openBuildArchive, type PackageSet } from './packages-step.js';
import { kernelParts, type KernelParts } from './kernel-step.js';
import { buildTrees, type BuiltTrees } from './trees.js';

export interface PrepareTreesOptions {
  spec: string;
  /** A shipped board id or a board file. */
  board: string;
  /** A folder of board files looked in before the shipped ones (vendors' boards). */
  boardsDir?: string;
  mirror?: string;
  lock?: LockFile;
  offline?: boolean;
  /** SOURCE_DATE_EPOCH for the files the trees generate. */
  epoch?: number;
  progress?: Progress;
  /** Runs after the inputs are checked and before anything is downloaded (e.g. loading the signing key). */
  beforeDownload?: () => Promise<void>;
}

export interface PreparedTrees {
  spec: ImageSpec;
  board: Board;
  kernel: Kernel;
  plan: LayoutPlan;
  pkgs: PackageSet;
  kp: KernelParts;
  trees: BuiltTrees;
}

export async function prepareTrees(opts: PrepareTreesOptions): Promise<PreparedTrees> {
  const progress = opts.progress ?? noProgress;
  // Everything a user can get wrong is checked before any download.
  const spec = loadImageSpec(opts.spec).value;
  const vendorBoard = opts.boardsDir && join(opts.boardsDir, `${opts.board}.yml`);
  const board = loadBoard(vendorBoard && existsSync(vendorBoard) ? vendorBoard : opts.board).value;
  const kernelId = spec.kernel ?? board.kernel;
  const kernel = loadKernel(kernelId).value;
  if (kernel.arch !== board.arch) throw new EdgekitError(`kernel ${kernelId} is for ${kernel.arch}, board ${board.id} is ${board.arch}`);
  for (const limit of board.limits) {
    if (limit.when === 'root-on-disk' && spec.root === 'disk') throw new EdgekitError(`${opts.spec}: board ${board.id}: ${limit.message}`);
  }
  const overlays = spec.overlays.map((name) => loadOverlay(name));
  const plan = planLayout(board, spec.root);
  await opts.beforeDownload?.();

  const archive = await openBuildArchive(spec, opts.spec, board, opts.mirror, opts.offline);
  const names = groupNames(spec, board, kernel, overlays.flatMap((o) => o.packages));
  const pkgs = await fetchPackages(archive, names, opts.lock, progress);
  const kp = await kernelParts(pkgs.groups.kernel);
  progress({ phase: 'assemble', detail: 'root tree' });
  const trees = await buildTrees({
    spec, specFile: opts.spec, board, kernel, kernelParts: kp, overlays, plan,
    rootPackages: pkgs.groups.root, initrdPackages: pkgs.groups.initrd, epoch: opts.epoch,
  });
  return { spec, board, kernel, plan, pkgs, kp, trees };
}
