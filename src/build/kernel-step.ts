/**
 * The kernel's part of a build: the kernel image exactly as Debian ships it, the modules this board
 * and image need (with their dependencies, decompressed so busybox insmod loads them), and the
 * board's device trees.
 */
import { moduleBytes, moduleClosure, moduleIndex, type ModuleIndex } from '../packages/modules.js';
import type { UnpackedDeb } from '../packages/deb.js';
import type { Tree } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import type { FetchedPackage } from './packages-step.js';

export interface KernelParts {
  package: FetchedPackage;
  version: string; // the kernel release, e.g. 6.12.48+deb13-amd64
  image: { path: string; file: string; size: number };
  modules: ModuleIndex;
  dtbDir: string; // path in the package holding the device trees
  unpacked: UnpackedDeb;
}

export async function kernelParts(kernelGroup: FetchedPackage[]): Promise<KernelParts> {
  for (const pkg of kernelGroup) {
    const image = pkg.unpacked.entries.find((e) => e.type === 'file' && /^boot\/vmlinu[xz]-/.test(e.path));
    if (!image) continue;
    const version = image.path.replace(/^boot\/vmlinu[xz]-/, '');
    return {
      package: pkg,
      version,
      image: { path: image.path, file: image.content!, size: image.size ?? 0 },
      modules: await moduleIndex(pkg.unpacked),
      dtbDir: `usr/lib/linux-image-${version}`,
      unpacked: pkg.unpacked,
    };
  }
  throw new EdgekitError(`no kernel image (boot/vmlinuz-*) in ${kernelGroup.map((p) => p.name).join(', ')}`);
}

/** Adds the closure of `wanted` as usr/lib/modules/edgekit/<name>.ko and returns the load order. */
export async function addModules(tree: Tree, k: KernelParts, wanted: string[], skip: Set<string> = new Set()): Promise<string[]> {
  const order = moduleClosure(k.modules, wanted).filter((m) => !skip.has(m));
  for (const name of order) {
    const info = k.modules.get(name)!;
    tree.file(`usr/lib/modules/edgekit/${name}.ko`, await moduleBytes(info));
  }
  return order;
}

export function deviceTree(k: KernelParts, relPath: string): { file: string; size: number } {
  const path = `${k.dtbDir}/${relPath}`;
  const e = k.unpacked.entries.find((x) => x.path === path && x.type === 'file');
  if (!e) throw new EdgekitError(`device tree ${relPath} is not in ${k.package.name} (looked for ${path})`);
  return { file: e.content!, size: e.size ?? 0 };
}
