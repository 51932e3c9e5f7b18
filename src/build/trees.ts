/**
 * The trees of a build: the root filesystem (from the root packages, overlays, the spec's files and
 * generated configuration) and, for a root on disk, the small first-stage initramfs.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, resolve as resolvePath } from 'node:path';
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import type { Kernel } from '../spec/kernel.js';
import type { Overlay } from '../spec/overlay.js';
import { appletPath, busyboxApplets } from '../tree/busybox.js';
import { addHostFolder } from '../tree/files.js';
import { INIT_DISK, INIT_RAM } from '../tree/init.js';
import { addPackage, addUsrMergeLinks } from '../tree/packages.js';
import { addSystemConfig, LIB_SH } from '../tree/system.js';
import { readContent, Tree } from '../tree/tree.js';
import type { LayoutPlan } from '../image/layout.js';
import { EdgekitError } from '../util/errors.js';
import { moduleClosure } from '../packages/modules.js';
import { addUpdateConfig } from './update-config.js';
import { addModules, type KernelParts } from './kernel-step.js';
import type { FetchedPackage } from './packages-step.js';

export interface TreeInputs {
  spec: ImageSpec;
  specFile: string;
  board: Board;
  kernel: Kernel;
  kernelParts: KernelParts;
  overlays: Overlay[];
  plan: LayoutPlan;
  rootPackages: FetchedPackage[];
  initrdPackages: FetchedPackage[];
  epoch?: number;
}

export interface BuiltTrees {
  root: Tree;
  /** The initramfs: the root itself when the root lives in RAM. */
  initrd: Tree;
}

export async function buildTrees(inp: TreeInputs): Promise<BuiltTrees> {
  const { spec, board, kernel } = inp;
  const root = new Tree();
  addUsrMergeLinks(root);
  for (const pkg of inp.rootPackages) addPackage(root, pkg.unpacked);
  await addBusyboxLinks(root, 'the root');

  const services = [...inp.overlays.flatMap((o) => o.services), ...spec.services];
  const names = new Set<string>();
  for (const s of services) {
    if (names.has(s.name)) throw new EdgekitError(`${inp.specFile}: service ${s.name} is defined twice`);
    names.add(s.name);
  }
  const partitions = inp.plan.partitions.map((p) => ({ role: p.role, number: p.number }));

  // Modules: storage and verity in the first stage; the rest (data, config FAT, network) in the root.
  const hardware = board.modules;
  const storage = [...hardware, ...(spec.root === 'disk' ? kernel.modules.rootOnDisk : [])];
  const later = ['vfat', 'nls_cp437', 'nls_ascii', ...kernel.modules.data, ...(spec.network.dhcp.length ? kernel.modules.network : [])];
  let initrd: Tree;
  if (spec.root === 'ram') {
    const order = await addModules(root, inp.kernelParts, [...storage, ...later]);
    addSystemConfig(root, { spec: { ...spec, services }, board, table: inp.plan.table, partitions, modules: order });
    root.file('init', INIT_RAM, 0o755);
    initrd = root;
  } else {
    const first = moduleClosure(inp.kernelParts.modules, storage);
    const rest = await addModules(root, inp.kernelParts, later, new Set(first));
    addSystemConfig(root, { spec: { ...spec, services }, board, table: inp.plan.table, partitions, modules: rest });
    initrd = await firstStageTree(inp, storage, partitions);
  }

  for (const o of inp.overlays) await addOverlayFiles(root, o);
  // The update agent's configuration and the release repository's root keys the image trusts.
  if (inp.overlays.some((o) => o.name === 'ota-agent')) await addUpdateConfig(root, { spec, specFile: inp.specFile, board, epoch: inp.epoch });
  await addSpecFiles(root, spec, inp.specFile);
  return { root, initrd };
}

async function firstStageTree(inp: TreeInputs, storage: string[], partitions: Array<{ role: string; number: number }>): Promise<Tree> {
  const t = new Tree();
  addUsrMergeLinks(t);
  for (const pkg of inp.initrdPackages) {
    // Shared libraries and the two programs; no data files, no other binaries.
    addPackage(t, pkg.unpacked, {
      filter: (p) => /^usr\/lib\/[^/]+-linux-gnu[^/]*\/[^/]+\.so[.\d]*$/.test(p) || /^usr\/lib(64)?\/ld-linux[^/]*$/.test(p) || p === 'usr/bin/busybox' || p === 'usr/sbin/dmsetup',
    });
  }
  await addBusyboxLinks(t, 'the initramfs');
  const order = await addModules(t, inp.kernelParts, storage);
  for (const d of ['proc', 'sys', 'dev', 'newroot', 'etc/edgekit']) t.dir(d);
  t.file('etc/edgekit/lib.sh', LIB_SH, 0o755);
  t.file('etc/edgekit/modules', order.map((m) => `${m}\n`).join(''));
  const disk = `/dev/${inp.board.disk.device}${inp.board.disk.partitionPrefix}`;
  t.file('etc/edgekit/partitions', [`table ${inp.plan.table}`, `disk ${disk}`, ...partitions.map((p) => `part ${p.role} ${p.number}`), ''].join('\n'));
  t.file('init', INIT_DISK, 0o755);
  return t;
}

async function addBusyboxLinks(tree: Tree, where: string): Promise<void> {
  const bb = tree.get('usr/bin/busybox');
  if (!bb || bb.type !== 'file') throw new EdgekitError(`busybox is not in ${where}: add busybox-static to the packages`);
  for (const applet of busyboxApplets(await readContent(bb.content))) {
    const path = appletPath(applet);
    if (!tree.has(path)) tree.symlink(path, '/usr/bin/busybox');
  }
}

async function addOverlayFiles(tree: Tree, o: Overlay): Promise<void> {
  const files = `${o.dir}/files`;
  if (existsSync(files)) await addHostFolder(tree, files);
}

async function addSpecFiles(tree: Tree, spec: ImageSpec, specFile: string): Promise<void> {
  for (const f of spec.files) {
    const mode = typeof f.mode === 'string' ? parseInt(f.mode, 8) : f.mode;
    let data: Buffer;
    if (f.content !== undefined) data = Buffer.from(f.content);
    else {
      const src = resolvePath(dirname(specFile), f.source!);
      try {
        data = await readFile(src);
      } catch {
        throw new EdgekitError(`${specFile}: files: ${f.path}: cannot read source ${src}`);
      }
    }
    tree.file(f.path.slice(1), data, mode);
  }
}
