/**
 * Disk images and releases for the device simulator: a small synthetic image with the same A/B
 * layout as a built one (GPT, ESP with systemd-boot's files, two slots holding squashfs-like
 * payloads with a dm-verity tree), so a thousand fault schedules stay fast; the same for a
 * Raspberry Pi (MBR, FAT boot partition made by the builder's own rpiBootFiles: config.txt,
 * boot.scr, uboot.env or tryboot's files, with stand-in firmware, U-Boot and device trees); and
 * the same for a real built gateway image.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, writeFileSync, writeSync, ftruncateSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { Tree } from '../../src/tree/tree.js';
import { writeFat } from '../../src/fs/fat.js';
import { FatReader } from '../../src/fs/fat-reader.js';
import { buildGpt } from '../../src/fs/gpt.js';
import { appendVerityHashTree } from '../../src/fs/verity.js';
import { entryConf, entryFileName, loaderConf } from '../../src/boot/systemd-boot.js';
import { RPI_MODELS, rpiBootFiles, type RpiModel } from '../../src/boot/rpi.js';
import { buildMbr, MBR_TYPE } from '../../src/fs/mbr.js';
import { cmdlineForSlot, cmdlineWithoutSlot } from '../../src/ota/slots/bootchooser.js';
import { GPT_TYPES } from '../../src/image/layout.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import type { SimLayout } from '../../src/ota/sim/layout.js';
import { simLayoutFromManifest } from '../../src/ota/sim/layout.js';
import type { ReleaseUnderTest } from '../../src/ota/sim/scripted-updater.js';

const MiB = 1 << 20;

export function bytes(n: number, seed: string): Buffer {
  const out = Buffer.alloc(n);
  let block = Buffer.alloc(0);
  for (let i = 0, k = 0; i < n; i += block.length, k++) {
    block = createHash('sha256').update(`${seed}:${k}`).digest();
    block.copy(out, i);
  }
  return out;
}

export interface SimRelease extends ReleaseUnderTest {
  data: Buffer;
}

function cmdlineFor(v: { rootHash: string; salt: string; dataBlocks: number; hashOffset: number }): string {
  return `console=ttyS0,115200 panic=5 edgekit.slot=a edgekit.verity=${v.rootHash}:${v.salt}:${v.dataBlocks}:${v.hashOffset / 4096}`;
}

/** A release: a payload with its verity tree (built by the real writer), a kernel and an initramfs. */
export async function makeRelease(dir: string, version: string, opts: { payloadBytes?: number; kernel?: Buffer; initrd?: Buffer; squashfs?: Buffer } = {}): Promise<SimRelease> {
  const path = join(dir, `payload-${version}.img`);
  const data = opts.squashfs ?? bytes(opts.payloadBytes ?? 48 * 1024 + 123, `payload ${version}`);
  writeFileSync(path, data);
  const verity = await appendVerityHashTree(path, { dataSize: data.length, salt: createHash('sha256').update(`salt ${version}`).digest() });
  const payload = readFileSync(path);
  const kernel = opts.kernel ?? bytes(24 * 1024, `kernel ${version}`);
  const initrd = opts.initrd ?? bytes(9 * 1024, `initrd ${version}`);
  const { totalSize: _t, ...params } = verity;
  return {
    version,
    data: payload,
    payload: async function* () {
      for (let o = 0; o < payload.length; o += 16384) yield payload.subarray(o, o + 16384);
    },
    sha256: createHash('sha256').update(payload).digest('hex'),
    size: payload.length,
    verity: params,
    boot: { kernel, initrd, cmdline: cmdlineFor(params), title: `test ${version}` },
  };
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** A small GPT disk with the board layout (ESP, system-a, system-b, config, data); slot A holds `release`. */
export async function makeSimImage(dir: string, release: SimRelease, opts: { espBytes?: number; slotBytes?: number } = {}): Promise<{ image: string; layout: SimLayout }> {
  const esp = { start: MiB, size: opts.espBytes ?? 4 * MiB };
  const slotSize = opts.slotBytes ?? 256 * 1024;
  const a = { start: esp.start + esp.size, size: slotSize };
  const b = { start: a.start + slotSize, size: slotSize };
  const config = { start: b.start + slotSize, size: 256 * 1024 };
  const diskSize = config.start + config.size + MiB;
  const layout: SimLayout = { boot: esp, slots: { a, b } };

  const tree = new Tree();
  tree.file('EFI/BOOT/BOOTX64.EFI', bytes(20_000, 'systemd-boot'));
  tree.file('loader/loader.conf', loaderConf());
  tree.file(entryFileName(1, 'a'), entryConf({ title: `test ${release.version} (slot A)`, slot: 'a', boot: { kernel: 'slot-a/vmlinuz', initrd: 'slot-a/initrd.img', cmdline: release.boot.cmdline, root: 'disk' } }));
  tree.file('slot-a/vmlinuz', release.boot.kernel);
  tree.file('slot-a/initrd.img', release.boot.initrd!);
  const espPath = join(dir, 'esp.fat');
  await writeFat(tree, espPath, { size: esp.size, label: 'ESP', volumeId: 0x5eed, mtime: 1_700_000_000, partitionOffset: esp.start });

  const image = join(dir, 'sim-disk.img');
  const parts = [
    { name: 'boot', typeGuid: GPT_TYPES.esp, r: esp },
    { name: 'system-a', typeGuid: GPT_TYPES.linux, r: a },
    { name: 'system-b', typeGuid: GPT_TYPES.linux, r: b },
    { name: 'config', typeGuid: GPT_TYPES.basicData, r: config },
  ];
  const gpt = buildGpt({
    diskSize,
    diskGuid: '6B1F0E3C-8E3A-4C52-9D1A-0A1B2C3D4E5F',
    alignment: 512,
    partitions: parts.map((p, i) => ({ name: p.name, typeGuid: p.typeGuid, uniqueGuid: `6B1F0E3C-8E3A-4C52-9D1A-0A1B2C3D4E${(0x60 + i).toString(16).toUpperCase()}`, firstLba: p.r.start / 512, lastLba: (p.r.start + p.r.size) / 512 - 1 })),
  });
  const fd = openSync(image, 'w');
  try {
    ftruncateSync(fd, diskSize);
    writeSync(fd, gpt.primary, 0, gpt.primary.length, 0);
    writeSync(fd, gpt.backup, 0, gpt.backup.length, gpt.backupOffset);
    const espBytes = readFileSync(espPath);
    writeSync(fd, espBytes, 0, espBytes.length, esp.start);
    writeSync(fd, release.data, 0, release.data.length, a.start);
  } finally {
    closeSync(fd);
  }
  return { image, layout };
}

/**
 * A small Raspberry Pi disk (MBR: FAT boot, system-a, system-b, config) whose boot partition is
 * what the builder writes for `model` with `loader`, slot A holding `release` and slot B empty
 * (as built) or holding `slotB`.
 * Only the files the firmware itself would run (start*.elf, u-boot.bin) and the device trees are
 * stand-ins: the simulator never executes them.
 */
export async function makeRpiSimImage(
  dir: string,
  release: SimRelease,
  opts: { loader: 'uboot' | 'tryboot'; model?: RpiModel; bootBytes?: number; slotBytes?: number; tries?: number; slotB?: SimRelease },
): Promise<{ image: string; layout: SimLayout }> {
  const model = opts.model ?? 'rpi4';
  const boot = { start: MiB, size: opts.bootBytes ?? 8 * MiB };
  const slotSize = opts.slotBytes ?? 256 * 1024;
  const a = { start: boot.start + boot.size, size: slotSize };
  const b = { start: a.start + slotSize, size: slotSize };
  const config = { start: b.start + slotSize, size: MiB };
  const diskSize = config.start + config.size + MiB;
  const layout: SimLayout = { boot, slots: { a, b } };

  const stand = (name: string, n: number) => {
    const p = join(dir, `stand-in-${name.replace(/\W+/g, '_')}`);
    writeFileSync(p, bytes(n, `stand-in ${name}`));
    return p;
  };
  const dtbs = { [RPI_MODELS[model].kernelDtb]: stand(RPI_MODELS[model].kernelDtb, 3000) };
  const slot = (name: 'A' | 'B', r: SimRelease | undefined) => {
    if (!r) return { name, cmdline: '', dtbs: {} };
    const kernel = join(dir, `vmlinuz-${r.version}`);
    writeFileSync(kernel, r.boot.kernel);
    const initrd = join(dir, `initrd-${r.version}`);
    writeFileSync(initrd, r.boot.initrd!);
    // As the builder does: under U-Boot the script appends edgekit.slot=, with tryboot cmdline.txt carries it.
    const cmdline = opts.loader === 'uboot' ? cmdlineWithoutSlot(r.boot.cmdline) : cmdlineForSlot(r.boot.cmdline, name === 'A' ? 'a' : 'b');
    return { name, kernel, initrd, cmdline, dtbs };
  };
  const files = rpiBootFiles({
    model,
    loader: opts.loader,
    firmwareFile: (name) => stand(name, 4000),
    ubootBin: stand('u-boot.bin', 6000),
    dtbs,
    slots: [slot('A', release), slot('B', opts.slotB)],
    tries: opts.tries ?? 3,
    sourceDateEpoch: 1_700_000_000,
  });
  const tree = new Tree();
  for (const f of files) tree.file(f.path, f.data ?? readFileSync(f.file!));
  const bootPath = join(dir, `rpi-${opts.loader}-boot.fat`);
  await writeFat(tree, bootPath, { size: boot.size, label: 'BOOT', volumeId: 0x5eed, mtime: 1_700_000_000, partitionOffset: boot.start });

  const image = join(dir, `rpi-${opts.loader}-disk.img`);
  const table = buildMbr({
    diskSize,
    diskSignature: 0x5eed0001,
    partitions: [
      { type: MBR_TYPE.fat32Lba, firstLba: boot.start / 512, sectors: boot.size / 512, bootable: true },
      { type: MBR_TYPE.linux, firstLba: a.start / 512, sectors: a.size / 512 },
      { type: MBR_TYPE.linux, firstLba: b.start / 512, sectors: b.size / 512 },
      { type: MBR_TYPE.fat32Lba, firstLba: config.start / 512, sectors: config.size / 512 },
    ],
    alignment: 512,
  });
  const fd = openSync(image, 'w');
  try {
    ftruncateSync(fd, diskSize);
    for (const w of table) writeSync(fd, w.data, 0, w.data.length, w.offset);
    const bootBytes = readFileSync(bootPath);
    writeSync(fd, bootBytes, 0, bootBytes.length, boot.start);
    writeSync(fd, release.data, 0, release.data.length, a.start);
    if (opts.slotB) writeSync(fd, opts.slotB.data, 0, opts.slotB.data.length, b.start);
  } finally {
    closeSync(fd);
  }
  return { image, layout };
}

/** What a built image's slot A runs, and "the next release": the same root filesystem re-sealed with another verity salt. */
export async function releasesFromBuiltImage(dir: string, image: string, manifest: ImageManifest): Promise<{ layout: SimLayout; currentRoot: string; kernelSha256: string; next: SimRelease }> {
  const layout = simLayoutFromManifest(manifest);
  const payload = manifest.payloads.find((p) => p.partition === 'system-a' && p.verity);
  if (!payload?.verity) throw new Error('the built image has no verity-protected system-a payload');
  const fd = openSync(image, 'r');
  const squashfs = Buffer.alloc(payload.verity.hashOffset);
  readSync(fd, squashfs, 0, squashfs.length, layout.slots.a.start);
  closeSync(fd);
  const reader = await FatReader.open(image, layout.boot.start);
  const kernel = await reader.readFile(manifest.slots.a.kernel);
  const initrd = await reader.readFile(manifest.slots.a.initrd);
  await reader.close();
  const next = await makeRelease(dir, `${manifest.version}+next`, { squashfs, kernel, initrd });
  next.boot.cmdline = manifest.slots.a.cmdline.replace(/edgekit\.verity=\S+/, `edgekit.verity=${next.verity.rootHash}:${next.verity.salt}:${next.verity.dataBlocks}:${next.verity.hashOffset / 4096}`);
  return { layout, currentRoot: payload.verity.rootHash, kernelSha256: sha256(kernel), next };
}
