/**
 * In-place changes to an existing FAT16/FAT32 filesystem through positioned I/O on a block device
 * (a partition of a disk, or of an image file, at a byte offset): no mounting, no kernel driver.
 * The update agent uses it to edit the ESP / Raspberry Pi boot partition of a running device.
 *
 * Every change is ordered so that a power cut at any point leaves either the old or the new state
 * visible to a FAT reader (see docs/updates.md, "What FAT can make atomic"):
 * - file data goes into free clusters, its FAT chain is written (first FAT, then the copies), and
 *   both are flushed before any directory entry points at them;
 * - the switch is one directory-entry write inside one sector, which the device writes whole;
 * - clusters are freed only after the entry that used them is gone and flushed.
 * What a cut can leave behind is harmless to readers but not to `fsck.fat -n`: lost clusters, FAT
 * copies that differ, an orphaned long-name fragment, or both names of an interrupted rename that
 * had to move. `repair()` cleans exactly those, deterministically.
 */
import { EdgekitError } from '../util/errors.js';
import { ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_LONG_NAME, ATTR_VOLUME_ID, DIRENT_SIZE, dosTimestamp, shortEntry } from './fat-dirent.js';
import { FAT16_MIN_CLUSTERS, FAT32_MIN_CLUSTERS } from './fat-geometry.js';
import { ShortNameAllocator, lfnChars, checkLongName, isExactShortName, longNameEntries, packShortName, shortNameChecksum } from './fat-names.js';
import { parseBpb } from './fat-reader.js';

/** Positioned, flushable byte storage: a disk, a partition of one, or a simulated device. */
export interface BlockDevice {
  /** For messages: a device or file name. */
  readonly name: string;
  readonly size: number;
  /** Reads exactly buf.length bytes at `position` (throws past the end). */
  read(buf: Buffer, position: number): Promise<void>;
  write(buf: Buffer, position: number): Promise<void>;
  /** Returns once everything written before it is on stable storage (fsync). */
  sync(): Promise<void>;
}

export interface FatEntry {
  /** The long name when there is one, else the short name as shown. */
  name: string;
  isDir: boolean;
  size: number;
  firstCluster: number;
}

export interface FatRepairReport {
  /** FAT copies rewritten from the first FAT. */
  fatCopiesRewritten: number;
  orphanLongNameEntries: number;
  /** Old names of renames cut short after the new name was written. */
  interruptedRenames: string[];
  lostClustersFreed: number;
}

const FREE_SLOT = 0xe5;
const END_SLOT = 0x00;
/** Clusters read or written per I/O when files are contiguous. */
const IO_CHUNK = 1 << 20;

interface Geometry {
  fatType: 'fat16' | 'fat32';
  bytesPerSector: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  numFats: number;
  rootEntries: number;
  fatSectors: number;
  rootCluster: number;
  fsInfoSector: number;
  clusterCount: number;
  clusterSize: number;
  rootDirStart: number;
  dataStart: number;
}

/** One directory as loaded: its bytes and where each 32-byte slot lives on the device. */
interface Dir {
  path: string;
  /** null: FAT16's fixed root directory. */
  cluster: number | null;
  chain: number[];
  raw: Buffer;
  sets: DirSet[];
  /** Long-name slots with no short entry to belong to. */
  orphans: number[];
}

/** A short entry and the long-name slots before it. */
interface DirSet {
  name: string;
  short: Buffer;
  attr: number;
  firstCluster: number;
  size: number;
  /** Slot index of the first long-name entry, or of the short entry when there is none. */
  first: number;
  /** Slot index of the short entry. */
  last: number;
}

export class FatVolume {
  private fat!: Buffer;
  private dirtyFatSectors = new Set<number>();
  private readonly stamp: { date: number; time: number };

  private constructor(
    private readonly dev: BlockDevice,
    private readonly base: number,
    private readonly g: Geometry,
    private readonly label: string,
    mtime: number,
  ) {
    this.stamp = dosTimestamp(mtime);
  }

  /**
   * Opens the FAT filesystem `offset` bytes into `dev`. New and changed entries are stamped with
   * `mtime` (seconds; default the DOS epoch): the device clock never reaches the disk.
   */
  static async open(dev: BlockDevice, offset = 0, opts: { mtime?: number } = {}): Promise<FatVolume> {
    const label = offset ? `${dev.name} at byte ${offset}` : dev.name;
    const boot = Buffer.alloc(512);
    await dev.read(boot, offset);
    const vol = new FatVolume(dev, offset, parseGeometry(boot, label), label, opts.mtime ?? 315532800);
    vol.fat = Buffer.alloc(vol.g.fatSectors * vol.g.bytesPerSector);
    await dev.read(vol.fat, offset + vol.g.reservedSectors * vol.g.bytesPerSector);
    return vol;
  }

  get fatType(): 'fat16' | 'fat32' {
    return this.g.fatType;
  }

  get clusterSize(): number {
    return this.g.clusterSize;
  }

  freeBytes(): number {
    let n = 0;
    for (let c = 2; c < this.g.clusterCount + 2; c++) if (this.get(c) === 0) n++;
    return n * this.g.clusterSize;
  }

  async list(dirPath = ''): Promise<FatEntry[]> {
    const dir = await this.loadDir(dirPath);
    return dir.sets.map(entryOf);
  }

  async stat(path: string): Promise<FatEntry | undefined> {
    const { dir, name } = await this.parentOf(path);
    const set = findSet(dir, name);
    return set && entryOf(set);
  }

  async readFile(path: string): Promise<Buffer> {
    const { dir, name } = await this.parentOf(path);
    const set = findSet(dir, name);
    if (!set || set.attr & ATTR_DIRECTORY) throw new EdgekitError(`${this.label}: no file "${path}"`);
    const out = Buffer.alloc(set.size);
    if (set.size === 0) return out;
    const chain = this.chain(set.firstCluster, path);
    let done = 0;
    for (const run of runs(chain)) {
      const len = Math.min(run.count * this.g.clusterSize, set.size - done);
      if (len <= 0) break;
      await this.readBytes(out.subarray(done, done + len), this.clusterOffset(run.first));
      done += len;
    }
    if (done < set.size) throw new EdgekitError(`${this.label}: "${path}" has too few clusters for its ${set.size} bytes`);
    return out;
  }

  /** Creates missing directories along `path`, each made whole before its parent names it. */
  async mkdir(path: string): Promise<void> {
    const parts = splitPath(path);
    let sofar = '';
    for (const part of parts) {
      const dir = await this.loadDir(sofar);
      const existing = findSet(dir, part);
      const here = sofar ? `${sofar}/${part}` : part;
      if (existing) {
        if (!(existing.attr & ATTR_DIRECTORY)) throw new EdgekitError(`${this.label}: "${here}" is a file, not a directory`);
      } else {
        const [cluster] = this.allocate(1, here);
        const block = Buffer.alloc(this.g.clusterSize);
        const dot = (name: string, c: number) => shortEntry({ name: Buffer.from(name.padEnd(11, ' '), 'latin1'), attr: ATTR_DIRECTORY, cluster: c, size: 0, stamp: this.stamp });
        dot('.', cluster).copy(block, 0);
        dot('..', dir.path === '' ? 0 : dir.cluster!).copy(block, DIRENT_SIZE); // '..' of a root child is cluster 0, also on FAT32
        await this.writeBytes(block, this.clusterOffset(cluster));
        await this.dev.sync();
        this.set(cluster, this.eoc());
        await this.commitFat();
        await this.addSet(dir, part, ATTR_DIRECTORY, cluster, 0);
      }
      sofar = here;
    }
  }

  /**
   * Creates `path` or replaces its contents, all or nothing: the new bytes go to free clusters,
   * then one directory-entry write switches to them; the old clusters are freed afterwards.
   * The parent directory must exist.
   */
  async writeFile(path: string, data: Buffer): Promise<void> {
    if (data.length > 0xffffffff) throw new EdgekitError(`${this.label}: "${path}" is larger than a FAT file can be`);
    const { dir, name } = await this.parentOf(path);
    const existing = findSet(dir, name);
    if (existing && existing.attr & ATTR_DIRECTORY) throw new EdgekitError(`${this.label}: "${path}" is a directory`);
    const first = await this.storeData(data, path);
    if (existing) {
      const old = existing.firstCluster;
      const o = existing.last * DIRENT_SIZE;
      if (this.g.fatType === 'fat32') dir.raw.writeUInt16LE(first >>> 16, o + 20);
      dir.raw.writeUInt16LE(first & 0xffff, o + 26);
      dir.raw.writeUInt32LE(data.length, o + 28);
      dir.raw.writeUInt16LE(this.stamp.time, o + 22);
      dir.raw.writeUInt16LE(this.stamp.date, o + 24);
      await this.writeDirSlots(dir, [existing.last]);
      await this.dev.sync();
      await this.freeChain(old, path);
    } else {
      await this.addSet(dir, name, ATTR_ARCHIVE, first, data.length);
    }
  }

  /**
   * Overwrites a file's bytes where they are (same size, same clusters): for files whose readers
   * detect a torn write themselves (U-Boot's environment carries a CRC) and whose location must not
   * change. Not atomic: a cut can leave some sectors old and some new.
   */
  async rewriteInPlace(path: string, data: Buffer): Promise<void> {
    const { dir, name } = await this.parentOf(path);
    const set = findSet(dir, name);
    if (!set || set.attr & ATTR_DIRECTORY) throw new EdgekitError(`${this.label}: no file "${path}"`);
    if (set.size !== data.length) throw new EdgekitError(`${this.label}: "${path}" is ${set.size} bytes; an in-place rewrite must keep the size (got ${data.length})`);
    let done = 0;
    for (const run of runs(this.chain(set.firstCluster, path))) {
      const len = Math.min(run.count * this.g.clusterSize, data.length - done);
      if (len <= 0) break;
      await this.writeBytes(data.subarray(done, done + len), this.clusterOffset(run.first));
      done += len;
    }
    await this.dev.sync();
  }

  /**
   * Renames a file within its directory. When the new name's entries fit where the old ones are
   * (as the loader entries' names always do), this is one sector write: atomic. Otherwise the new
   * entries are written after the old ones first, then the old ones are deleted; a cut in between
   * leaves both names, which `repair()` resolves in favour of the new one.
   */
  async rename(from: string, to: string): Promise<void> {
    const src = await this.parentOf(from);
    const dst = splitParent(to);
    if (dst.parent.toUpperCase() !== src.parentPath.toUpperCase()) {
      throw new EdgekitError(`${this.label}: cannot rename "${from}" to "${to}": only renames within one directory are supported`);
    }
    const dir = src.dir;
    const set = findSet(dir, src.name);
    if (!set) throw new EdgekitError(`${this.label}: no "${from}" to rename`);
    checkLongName(dst.name, to);
    const clash = findSet(dir, dst.name);
    if (clash && clash !== set) throw new EdgekitError(`${this.label}: cannot rename "${from}": "${to}" exists`);
    const short = this.shortNameFor(dir, dst.name, set);
    const entries = this.entriesFor(dst.name, short, set.attr, set.firstCluster, set.size, dir.raw.subarray(set.last * DIRENT_SIZE, set.last * DIRENT_SIZE + DIRENT_SIZE));
    const start = set.last - entries.length + 1;
    const sector = this.slotSector(dir, set.last);
    const fitsInPlace =
      start >= 0 &&
      this.slotSector(dir, start) === sector &&
      range(start, set.first).every((s) => dir.raw[s * DIRENT_SIZE] === FREE_SLOT) &&
      range(set.first, set.last + 1).every((s) => this.slotSector(dir, s) === sector);
    if (fitsInPlace) {
      const touched = range(Math.min(start, set.first), set.last + 1);
      for (const s of range(set.first, start)) dir.raw[s * DIRENT_SIZE] = FREE_SLOT;
      entries.forEach((e, i) => e.copy(dir.raw, (start + i) * DIRENT_SIZE));
      await this.writeDirSlots(dir, touched);
      await this.dev.sync();
      return;
    }
    // Both names exist (sharing the clusters) between these two steps; repair() keeps the later.
    const { at, slots } = await this.freeRun(dir, entries.length, set.last + 1);
    entries.forEach((e, i) => e.copy(dir.raw, (at + i) * DIRENT_SIZE));
    await this.writeDirSlots(dir, slots);
    await this.dev.sync();
    await this.deleteSlots(dir, set);
    await this.dev.sync();
  }

  /** Deletes a file (or an empty directory): the entry goes first, its clusters after. */
  async remove(path: string): Promise<void> {
    const { dir, name } = await this.parentOf(path);
    const set = findSet(dir, name);
    if (!set) return;
    if (set.attr & ATTR_DIRECTORY) {
      const child = await this.loadDir(path);
      if (child.sets.length > 0) throw new EdgekitError(`${this.label}: directory "${path}" is not empty`);
    }
    await this.deleteSlots(dir, set);
    await this.dev.sync();
    await this.freeChain(set.firstCluster, path);
  }

  /**
   * Brings the filesystem back to what fsck.fat calls clean after a power cut in the middle of a
   * change, always the same way: FAT copies are rewritten from the first FAT (which every change
   * writes first), orphaned long-name entries are deleted, where two entries of one directory
   * share their clusters the earlier one (the old name of a moved rename) is deleted, and
   * clusters no entry reaches are freed.
   */
  async repair(): Promise<FatRepairReport> {
    const report: FatRepairReport = { fatCopiesRewritten: 0, orphanLongNameEntries: 0, interruptedRenames: [], lostClustersFreed: 0 };
    const fatBytes = this.g.fatSectors * this.g.bytesPerSector;
    for (let copy = 1; copy < this.g.numFats; copy++) {
      const other = Buffer.alloc(fatBytes);
      const at = this.base + (this.g.reservedSectors + copy * this.g.fatSectors) * this.g.bytesPerSector;
      await this.dev.read(other, at);
      if (!other.equals(this.fat)) {
        await this.dev.write(this.fat, at);
        report.fatCopiesRewritten++;
      }
    }
    await this.dev.sync();

    const used = new Set<number>();
    const walk = async (path: string) => {
      const dir = await this.loadDir(path);
      for (const c of dir.chain) used.add(c);
      if (dir.orphans.length) {
        for (const s of dir.orphans) dir.raw[s * DIRENT_SIZE] = FREE_SLOT;
        await this.writeDirSlots(dir, dir.orphans);
        report.orphanLongNameEntries += dir.orphans.length;
      }
      const byCluster = new Map<number, DirSet>();
      for (const set of dir.sets) {
        if (set.firstCluster === 0) continue;
        const earlier = byCluster.get(set.firstCluster);
        if (earlier && !(set.attr & ATTR_DIRECTORY)) {
          await this.deleteSlots(dir, earlier);
          report.interruptedRenames.push(path ? `${path}/${earlier.name}` : earlier.name);
        }
        byCluster.set(set.firstCluster, set);
      }
      await this.dev.sync();
      for (const set of (await this.loadDir(path)).sets) {
        const child = path ? `${path}/${set.name}` : set.name;
        if (set.attr & ATTR_DIRECTORY) await walk(child);
        else if (set.firstCluster) for (const c of this.chain(set.firstCluster, child)) used.add(c);
      }
    };
    await walk('');
    for (let c = 2; c < this.g.clusterCount + 2; c++) {
      if (this.get(c) !== 0 && !used.has(c) && !this.isBad(c)) {
        this.set(c, 0);
        report.lostClustersFreed++;
      }
    }
    await this.commitFat();
    return report;
  }

  // ---- directories ----

  private async parentOf(path: string): Promise<{ dir: Dir; name: string; parentPath: string }> {
    const { parent, name } = splitParent(path);
    return { dir: await this.loadDir(parent), name, parentPath: parent };
  }

  private async loadDir(path: string): Promise<Dir> {
    let cluster: number | null = this.g.fatType === 'fat32' ? this.g.rootCluster : null;
    let sofar = '';
    for (const part of splitPath(path)) {
      const dir = await this.readDir(sofar, cluster);
      const set = findSet(dir, part);
      sofar = sofar ? `${sofar}/${part}` : part;
      if (!set || !(set.attr & ATTR_DIRECTORY)) throw new EdgekitError(`${this.label}: no directory "${sofar}"`);
      cluster = set.firstCluster;
    }
    return this.readDir(sofar, cluster);
  }

  private async readDir(path: string, cluster: number | null): Promise<Dir> {
    let raw: Buffer;
    let chain: number[] = [];
    if (cluster === null) {
      raw = Buffer.alloc(this.g.rootEntries * DIRENT_SIZE);
      await this.readBytes(raw, this.g.rootDirStart);
    } else {
      chain = this.chain(cluster, path || '/');
      raw = Buffer.alloc(chain.length * this.g.clusterSize);
      for (let i = 0; i < chain.length; i++) await this.readBytes(raw.subarray(i * this.g.clusterSize, (i + 1) * this.g.clusterSize), this.clusterOffset(chain[i]));
    }
    const { sets, orphans } = parseSets(raw, this.g.fatType === 'fat32');
    return { path, cluster, chain, raw, sets, orphans };
  }

  /** Byte offset (from the device start) of slot `i` of `dir`. */
  private slotOffset(dir: Dir, i: number): number {
    const byte = i * DIRENT_SIZE;
    if (dir.cluster === null) return this.base + this.g.rootDirStart + byte;
    return this.base + this.clusterOffset(dir.chain[Math.floor(byte / this.g.clusterSize)]) + (byte % this.g.clusterSize);
  }

  private slotSector(dir: Dir, i: number): number {
    return Math.floor(this.slotOffset(dir, i) / this.g.bytesPerSector);
  }

  /** Writes every sector holding one of `slots`, whole, from `dir.raw`. */
  private async writeDirSlots(dir: Dir, slots: number[]): Promise<void> {
    const perSector = this.g.bytesPerSector / DIRENT_SIZE;
    const sectorsDone = new Set<number>();
    for (const s of slots) {
      const first = s - (s % perSector);
      if (sectorsDone.has(first)) continue;
      sectorsDone.add(first);
      await this.dev.write(dir.raw.subarray(first * DIRENT_SIZE, (first + perSector) * DIRENT_SIZE), this.slotOffset(dir, first));
    }
  }

  /** Deletes a set: long-name slots in other sectors first, so a cut leaves a valid short-name-only entry. */
  private async deleteSlots(dir: Dir, set: DirSet): Promise<void> {
    const shortSector = this.slotSector(dir, set.last);
    const before = range(set.first, set.last).filter((s) => this.slotSector(dir, s) !== shortSector);
    for (const s of range(set.first, set.last + 1)) dir.raw[s * DIRENT_SIZE] = FREE_SLOT;
    if (before.length) await this.writeDirSlots(dir, before);
    await this.writeDirSlots(dir, [set.last]);
  }

  /**
   * The first run of `count` free slots at or after `from` that lies inside one sector (so writing
   * it is one sector write), growing the directory when none is left. Slots between the old end
   * marker and the run are marked deleted, so the end marker cannot hide the new entries.
   */
  private async freeRun(dir: Dir, count: number, from = 0): Promise<{ at: number; slots: number[] }> {
    const perSector = this.g.bytesPerSector / DIRENT_SIZE;
    if (count > perSector) throw new EdgekitError(`${this.label}: a name needing ${count} directory entries does not fit one sector`);
    for (;;) {
      const slots = dir.raw.length / DIRENT_SIZE;
      let endAt = 0;
      while (endAt < slots && dir.raw[endAt * DIRENT_SIZE] !== END_SLOT) endAt++;
      const free = (k: number) => k >= endAt || dir.raw[k * DIRENT_SIZE] === FREE_SLOT;
      for (let s = from; s + count <= slots; s++) {
        if (Math.floor(s / perSector) !== Math.floor((s + count - 1) / perSector)) continue;
        if (!range(s, s + count).every(free)) continue;
        const gap = range(endAt, s);
        for (const k of gap) dir.raw[k * DIRENT_SIZE] = FREE_SLOT;
        return { at: s, slots: [...gap, ...range(s, s + count)] };
      }
      await this.growDir(dir);
    }
  }

  /** Adds one zeroed cluster to a directory: zeroed and flushed before the FAT links it. */
  private async growDir(dir: Dir): Promise<void> {
    if (dir.cluster === null) throw new EdgekitError(`${this.label}: the root directory is full (${this.g.rootEntries} entries)`);
    const [c] = this.allocate(1, dir.path || '/');
    const zero = Buffer.alloc(this.g.clusterSize);
    await this.writeBytes(zero, this.clusterOffset(c));
    await this.dev.sync();
    this.set(dir.chain[dir.chain.length - 1], c);
    this.set(c, this.eoc());
    await this.commitFat();
    dir.chain.push(c);
    dir.raw = Buffer.concat([dir.raw, zero]);
  }

  private async addSet(dir: Dir, name: string, attr: number, cluster: number, size: number): Promise<void> {
    checkLongName(name, dir.path ? `${dir.path}/${name}` : name);
    if (findSet(dir, name)) throw new EdgekitError(`${this.label}: "${name}" exists in "${dir.path || '/'}"`);
    const short = this.shortNameFor(dir, name);
    const entries = this.entriesFor(name, short, attr, cluster, size);
    const { at, slots } = await this.freeRun(dir, entries.length);
    entries.forEach((e, i) => e.copy(dir.raw, (at + i) * DIRENT_SIZE));
    await this.writeDirSlots(dir, slots);
    await this.dev.sync();
  }

  /** The short name for `name` in `dir`: its own 8.3 form when it has one, else a unique "~N" alias (a rename keeps its alias). */
  private shortNameFor(dir: Dir, name: string, self?: DirSet): Buffer {
    const others = dir.sets.filter((s) => s !== self).map((s) => shortDisplay(s.short));
    if (self && !isExactShortName(name.toUpperCase()) && shortDisplay(self.short).includes('~')) return Buffer.from(self.short);
    return new ShortNameAllocator([...others, name]).allocate(name).short;
  }

  private entriesFor(name: string, short: Buffer, attr: number, cluster: number, size: number, old?: Buffer): Buffer[] {
    const e = shortEntry({ name: short, attr, cluster, size, stamp: this.stamp });
    if (old) old.copy(e, 13, 13, 20); // a rename keeps the creation and access stamps...
    if (old) old.copy(e, 22, 22, 26); // ...and the write stamp
    const upper = name.toUpperCase();
    if (name === upper && isExactShortName(upper) && short.equals(packShort(upper))) return [e];
    return [...longNameEntries(name, short), e];
  }

  // ---- clusters and the FAT ----

  /** Writes `data` into newly allocated clusters, flushed, with the chain committed; returns the first cluster (0 when empty). */
  private async storeData(data: Buffer, what: string): Promise<number> {
    if (data.length === 0) return 0;
    const count = Math.ceil(data.length / this.g.clusterSize);
    const clusters = this.allocate(count, what);
    let done = 0;
    for (const run of runs(clusters)) {
      const bytes = run.count * this.g.clusterSize;
      // One IO_CHUNK buffer at a time: a whole run can be a kernel (tens of MB) on a device with little RAM.
      const chunk = Buffer.alloc(Math.min(bytes, IO_CHUNK));
      for (let o = 0; o < bytes; o += IO_CHUNK) {
        const n = Math.min(IO_CHUNK, bytes - o);
        chunk.fill(0, 0, n);
        data.copy(chunk, 0, Math.min(done + o, data.length), Math.min(done + o + n, data.length));
        await this.writeBytes(chunk.subarray(0, n), this.clusterOffset(run.first) + o);
      }
      done += bytes;
    }
    // No flush of its own: the data only has to be durable before an entry points at it, and
    // commitFat() flushes data and chain together, before the caller writes the entry.
    clusters.forEach((c, i) => this.set(c, i + 1 < clusters.length ? clusters[i + 1] : this.eoc()));
    await this.commitFat();
    return clusters[0];
  }

  private async freeChain(first: number, what: string): Promise<void> {
    if (first < 2) return;
    for (const c of this.chain(first, what)) this.set(c, 0);
    await this.commitFat();
  }

  /** Free clusters for `count` more: the first contiguous run that fits, else the first free ones. */
  private allocate(count: number, what: string): number[] {
    const total = this.g.clusterCount + 2;
    let runStart = -1;
    const scattered: number[] = [];
    for (let c = 2; c < total; c++) {
      if (this.get(c) !== 0) {
        runStart = -1;
        continue;
      }
      if (scattered.length < count) scattered.push(c);
      if (runStart < 0) runStart = c;
      if (c - runStart + 1 === count) return range(runStart, c + 1);
    }
    if (scattered.length < count) {
      throw new EdgekitError(`${this.label}: no room for "${what}": it needs ${count * this.g.clusterSize} bytes, ${this.freeBytes()} are free`);
    }
    return scattered;
  }

  /** Writes the changed FAT sectors to the first FAT, then to each copy, then flushes. */
  private async commitFat(): Promise<void> {
    const bps = this.g.bytesPerSector;
    const sectors = [...this.dirtyFatSectors].sort((a, b) => a - b);
    for (let copy = 0; copy < this.g.numFats; copy++) {
      const fatStart = this.base + (this.g.reservedSectors + copy * this.g.fatSectors) * bps;
      for (const s of sectors) await this.dev.write(this.fat.subarray(s * bps, (s + 1) * bps), fatStart + s * bps);
    }
    this.dirtyFatSectors.clear();
    if (this.g.fatType === 'fat32' && this.g.fsInfoSector) await this.writeFsInfo();
    await this.dev.sync();
  }

  /** FAT32's free-cluster hint, kept exact so fsck.fat has nothing to say about it. */
  private async writeFsInfo(): Promise<void> {
    const at = this.base + this.g.fsInfoSector * this.g.bytesPerSector;
    const info = Buffer.alloc(512);
    await this.dev.read(info, at);
    if (info.readUInt32LE(0) !== 0x41615252 || info.readUInt32LE(484) !== 0x61417272) return;
    info.writeUInt32LE(this.freeBytes() / this.g.clusterSize, 488);
    info.writeUInt32LE(0xffffffff, 492); // no next-free hint: readers search from the start
    await this.dev.write(info, at);
  }

  private get(c: number): number {
    return this.g.fatType === 'fat16' ? this.fat.readUInt16LE(c * 2) : this.fat.readUInt32LE(c * 4) & 0x0fffffff;
  }

  private set(c: number, v: number): void {
    if (this.g.fatType === 'fat16') this.fat.writeUInt16LE(v, c * 2);
    else this.fat.writeUInt32LE(((this.fat.readUInt32LE(c * 4) & 0xf0000000) | v) >>> 0, c * 4);
    const width = this.g.fatType === 'fat16' ? 2 : 4;
    this.dirtyFatSectors.add(Math.floor((c * width) / this.g.bytesPerSector));
  }

  private eoc(): number {
    return this.g.fatType === 'fat16' ? 0xffff : 0x0fffffff;
  }

  private isBad(c: number): boolean {
    return this.get(c) === (this.g.fatType === 'fat16' ? 0xfff7 : 0x0ffffff7);
  }

  private chain(first: number, what: string): number[] {
    const eocMin = this.g.fatType === 'fat16' ? 0xfff8 : 0x0ffffff8;
    const out: number[] = [];
    for (let c = first; ; ) {
      if (c < 2 || c >= this.g.clusterCount + 2) throw new EdgekitError(`${this.label}: "${what}" uses cluster ${c}, outside the volume`);
      if (out.length > this.g.clusterCount) throw new EdgekitError(`${this.label}: "${what}" has a cluster chain that loops`);
      out.push(c);
      const n = this.get(c);
      if (n >= eocMin) return out;
      c = n;
    }
  }

  private clusterOffset(c: number): number {
    return this.g.dataStart + (c - 2) * this.g.clusterSize;
  }

  private readBytes(buf: Buffer, fsOffset: number): Promise<void> {
    return this.dev.read(buf, this.base + fsOffset);
  }

  private writeBytes(buf: Buffer, fsOffset: number): Promise<void> {
    return this.dev.write(buf, this.base + fsOffset);
  }
}

function parseGeometry(boot: Buffer, label: string): Geometry {
  const bpb = parseBpb(boot, label);
  const { bytesPerSector, sectorsPerCluster, reservedSectors, numFats, rootEntries, fatSectors, totalSectors } = bpb;
  const rootDirSectors = Math.ceil((rootEntries * DIRENT_SIZE) / bytesPerSector);
  const dataSector = reservedSectors + numFats * fatSectors + rootDirSectors;
  const clusterCount = Math.floor((totalSectors - dataSector) / sectorsPerCluster);
  if (clusterCount < FAT16_MIN_CLUSTERS) throw new EdgekitError(`${label}: not a FAT filesystem this editor changes (FAT12)`);
  const fatType = clusterCount < FAT32_MIN_CLUSTERS ? 'fat16' : 'fat32';
  return {
    fatType,
    bytesPerSector,
    sectorsPerCluster,
    reservedSectors,
    numFats,
    rootEntries,
    fatSectors,
    rootCluster: fatType === 'fat32' ? bpb.rootCluster : 0,
    fsInfoSector: fatType === 'fat32' ? boot.readUInt16LE(48) : 0,
    clusterCount,
    clusterSize: sectorsPerCluster * bytesPerSector,
    rootDirStart: (reservedSectors + numFats * fatSectors) * bytesPerSector,
    dataStart: dataSector * bytesPerSector,
  };
}

/** Groups a directory's slots into entries (long-name run + short entry) and orphaned long-name slots. */
function parseSets(raw: Buffer, fat32: boolean): { sets: DirSet[]; orphans: number[] } {
  const sets: DirSet[] = [];
  const orphans: number[] = [];
  let lfn: { parts: string[]; checksum: number; expect: number; first: number } | undefined;
  const dropLfn = (upto: number) => {
    if (lfn) orphans.push(...range(lfn.first, upto));
    lfn = undefined;
  };
  for (let i = 0; i * DIRENT_SIZE < raw.length; i++) {
    const o = i * DIRENT_SIZE;
    const b = raw[o];
    if (b === END_SLOT) {
      dropLfn(i);
      break;
    }
    if (b === FREE_SLOT) {
      dropLfn(i);
      continue;
    }
    const attr = raw[o + 11];
    if (attr === ATTR_LONG_NAME) {
      const seq = b & 0x1f;
      if (b & 0x40) {
        dropLfn(i);
        lfn = { parts: [], checksum: raw[o + 13], expect: seq, first: i };
      }
      if (!lfn || seq !== lfn.expect || raw[o + 13] !== lfn.checksum || seq === 0) {
        dropLfn(i);
        orphans.push(i);
        continue;
      }
      lfn.parts.unshift(lfnChars(raw, o));
      lfn.expect = seq - 1;
      continue;
    }
    const short = raw.subarray(o, o + 11);
    const valid = lfn && lfn.expect === 0 && lfn.checksum === shortNameChecksum(short);
    if (lfn && !valid) dropLfn(i);
    const first = valid ? lfn!.first : i;
    const longName = valid ? lfn!.parts.join('') : undefined;
    lfn = undefined;
    if (attr & ATTR_VOLUME_ID) continue;
    const display = shortDisplay(short, raw[o + 12]);
    if (display === '.' || display === '..') continue;
    sets.push({
      name: longName ?? display,
      short: Buffer.from(short),
      attr,
      firstCluster: ((fat32 ? raw.readUInt16LE(o + 20) : 0) << 16) | raw.readUInt16LE(o + 26),
      size: raw.readUInt32LE(o + 28),
      first,
      last: i,
    });
  }
  return { sets, orphans };
}


/** A stored 8.3 name as text ("EDGEKI~1.CON"); NT case bits lower-case it when given. */
function shortDisplay(short: Buffer, ntCase = 0): string {
  const bytes = Buffer.from(short);
  if (bytes[0] === 0x05) bytes[0] = 0xe5;
  let base = bytes.toString('latin1', 0, 8).trimEnd();
  let ext = bytes.toString('latin1', 8, 11).trimEnd();
  if (ntCase & 0x08) base = base.toLowerCase();
  if (ntCase & 0x10) ext = ext.toLowerCase();
  return ext ? `${base}.${ext}` : base;
}

function packShort(upper: string): Buffer {
  const dot = upper.indexOf('.');
  return packShortName(dot < 0 ? upper : upper.slice(0, dot), dot < 0 ? '' : upper.slice(dot + 1));
}

function findSet(dir: Dir, name: string): DirSet | undefined {
  const upper = name.toUpperCase();
  return dir.sets.find((s) => s.name === name) ?? dir.sets.find((s) => s.name.toUpperCase() === upper || shortDisplay(s.short) === upper);
}

function entryOf(s: DirSet): FatEntry {
  const isDir = (s.attr & ATTR_DIRECTORY) !== 0;
  return { name: s.name, isDir, size: isDir ? 0 : s.size, firstCluster: s.firstCluster };
}

function splitPath(path: string): string[] {
  return path.split('/').filter((p) => p !== '' && p !== '.');
}

function splitParent(path: string): { parent: string; name: string } {
  const parts = splitPath(path);
  if (parts.length === 0) throw new EdgekitError(`FAT: "${path}" names the root directory`);
  return { parent: parts.slice(0, -1).join('/'), name: parts[parts.length - 1] };
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}

/** Consecutive cluster numbers grouped, so contiguous files are read and written in few I/Os. */
function runs(clusters: number[]): Array<{ first: number; count: number }> {
  const out: Array<{ first: number; count: number }> = [];
  for (const c of clusters) {
    const last = out[out.length - 1];
    if (last && last.first + last.count === c) last.count++;
    else out.push({ first: c, count: 1 });
  }
  return out;
}
