/**
 * The first half of a build, on its own: spec + board -> fetched packages and the assembled trees,
 * with nothing written out. Used by the benchmark (bench/build) to time the payload writers on the
 * exact trees a build produces; it mirrors the steps `build()` runs before `writeOutputs`.
 */
import { loadBoard, type Board } from '../spec/board.js';
import { loadImageSpec, type ImageSpec } from '../spec/image-spec.js';
import { loadKernel, type Kernel } from '../spec/kernel.js';
import { loadOverlay } from '../spec/overlay.js';
import { planLayout, type LayoutPlan } from '../image/layout.js';
import { EdgekitError } from '../util/errors.js';
import { noProgress, type Progress } from '../util/progress.js';
import { fetchPackages, groupNames, openBuildArchive, type PackageSet } from './packages-step.js';
import { kernelParts, type KernelParts } from './kernel-step.js';
import { buildTrees, type BuiltTrees } from './trees.js';

export interface PrepareTreesOptions {
  spec: string;
  /** A shipped board id or a board file. */
  board: string;
  mirror?: string;
  progress?: Progress;
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
  const spec = loadImageSpec(opts.spec).value;
  const board = loadBoard(opts.board).value;
  const kernel = loadKernel(spec.kernel ?? board.kernel).value;
  if (kernel.arch !== board.arch) throw new EdgekitError(`kernel ${spec.kernel ?? board.kernel} is for ${kernel.arch}, board ${board.id} is ${board.arch}`);
  const overlays = spec.overlays.map((name) => loadOverlay(name));
  const plan = planLayout(board, spec.root);

  const archive = await openBuildArchive(spec, opts.spec, board, opts.mirror);
  const names = groupNames(spec, board, kernel, overlays.flatMap((o) => o.packages));
  const pkgs = await fetchPackages(archive, names, undefined, progress);
  const kp = await kernelParts(pkgs.groups.kernel);
  const trees = await buildTrees({
    spec, specFile: opts.spec, board, kernel, kernelParts: kp, overlays, plan,
    rootPackages: pkgs.groups.root, initrdPackages: pkgs.groups.initrd,
  });
  return { spec, board, kernel, plan, pkgs, kp, trees };
}
