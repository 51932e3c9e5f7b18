/**
 * FAT16/FAT32 volume geometry: cluster size, FAT size, reserved sectors and where the data area
 * starts, following Microsoft's FAT specification ("FAT: General Overview of On-Disk Format").
 * The FAT type is decided by the cluster count alone, as every reader decides it.
 */
import { EdgekitError } from '../util/errors.js';

export type FatType = 'fat16' | 'fat32';

export const FAT_SECTOR = 512;
export const FAT_COUNT = 2;
/** Cluster-count limits from the spec: FAT16 has 4085..65524 clusters, FAT32 65525 or more. */
export const FAT16_MIN_CLUSTERS = 4085;
export const FAT32_MIN_CLUSTERS = 65525;
/** Readers disagree by a few clusters at the limits; the spec says to keep clear of them. */
const LIMIT_MARGIN = 16;
/** FAT32 volumes can address 2^28 - 11 clusters. */
const FAT32_MAX_CLUSTERS = 0x0ffffff5;
/** mkfs.fat and Windows pick FAT32 from 512 MiB up; below that FAT16 wastes less on the FAT. */
const FAT32_PREFERRED_FROM = 512 * 1024 * 1024;
/** The data area starts on a multiple of this many sectors (4 KiB), or of the cluster if larger. */
const DATA_ALIGN_SECTORS = 8;

export interface FatGeometry {
  fatType: FatType;
  totalSectors: number;
  sectorsPerCluster: number;
  reservedSectors: number;
  /** Sectors per FAT copy. */
  fatSectors: number;
  /** FAT16's fixed root directory: entries (a multiple of 16) and sectors. 0 on FAT32. */
  rootEntries: number;
  rootDirSectors: number;
  dataStartSector: number;
  clusterCount: number;
}

/** Microsoft's default cluster sizes (sectors per cluster) by volume size in sectors. */
function defaultSectorsPerCluster(fatType: FatType, totalSectors: number): number {
  const table: Array<[number, number]> =
    fatType === 'fat16'
      ? [[32680, 2], [262144, 4], [524288, 8], [1048576, 16], [2097152, 32], [Infinity, 64]]
      : [[532480, 1], [16777216, 8], [33554432, 16], [67108864, 32], [Infinity, 64]];
  return table.find(([limit]) => totalSectors <= limit)![1];
}

function entryBytes(fatType: FatType): number {
  return fatType === 'fat16' ? 2 : 4;
}

/** Lays out a volume with a given type and cluster size; the cluster count is not checked here. */
export function layoutWith(fatType: FatType, totalSectors: number, sectorsPerCluster: number, rootEntries: number): FatGeometry {
  const baseReserved = fatType === 'fat32' ? 32 : 1;
  const rootDirSectors = fatType === 'fat32' ? 0 : (rootEntries * 32) / FAT_SECTOR;
  const align = Math.max(sectorsPerCluster, DATA_ALIGN_SECTORS);
  let fatSectors = 1;
  for (;;) {
    const metadata = baseReserved + FAT_COUNT * fatSectors + rootDirSectors;
    const reservedSectors = baseReserved + ((align - (metadata % align)) % align);
    const dataStartSector = reservedSectors + FAT_COUNT * fatSectors + rootDirSectors;
    const clusterCount = Math.max(0, Math.floor((totalSectors - dataStartSector) / sectorsPerCluster));
    const needed = Math.ceil(((clusterCount + 2) * entryBytes(fatType)) / FAT_SECTOR);
    if (needed <= fatSectors) {
      return {
        fatType,
        totalSectors,
        sectorsPerCluster,
        reservedSectors,
        fatSectors,
        rootEntries: fatType === 'fat32' ? 0 : rootEntries,
        rootDirSectors,
        dataStartSector,
        clusterCount,
      };
    }
    fatSectors = needed;
  }
}

function clusterRange(fatType: FatType): [number, number] {
  return fatType === 'fat16'
    ? [FAT16_MIN_CLUSTERS + LIMIT_MARGIN, FAT32_MIN_CLUSTERS - 1 - LIMIT_MARGIN]
    : [FAT32_MIN_CLUSTERS + LIMIT_MARGIN, FAT32_MAX_CLUSTERS];
}

/**
 * The geometry of a `fatType` volume of `totalSectors`, starting from the spec's default cluster
 * size and halving or doubling it until the cluster count suits the type; undefined if none does.
 */
function tryType(fatType: FatType, totalSectors: number, rootEntries: number): FatGeometry | undefined {
  const [min, max] = clusterRange(fatType);
  let spc = defaultSectorsPerCluster(fatType, totalSectors);
  let g = layoutWith(fatType, totalSectors, spc, rootEntries);
  while (g.clusterCount < min && spc > 1) {
    spc /= 2;
    g = layoutWith(fatType, totalSectors, spc, rootEntries);
  }
  // 32 KiB clusters are the largest every implementation reads.
  while (g.clusterCount > max && spc < 64) {
    spc *= 2;
    g = layoutWith(fatType, totalSectors, spc, rootEntries);
  }
  return g.clusterCount >= min && g.clusterCount <= max ? g : undefined;
}

/**
 * Geometry for a volume of `size` bytes. Without `fatType`, FAT32 from 512 MiB up and FAT16 below,
 * falling back to the other type when the size cannot give the preferred one a valid cluster count.
 * `rootEntries` (FAT16 only) is how many 32-byte entries the root directory needs.
 */
export function fatGeometry(size: number, fatType: FatType | undefined, rootEntries = 512, what = 'FAT filesystem'): FatGeometry {
  if (!Number.isInteger(size) || size <= 0 || size % FAT_SECTOR !== 0) {
    throw new EdgekitError(`${what}: size ${size} is not a positive multiple of ${FAT_SECTOR} bytes`);
  }
  const totalSectors = size / FAT_SECTOR;
  if (totalSectors > 0xffffffff) throw new EdgekitError(`${what}: size ${size} is beyond FAT's 2 TiB limit`);
  const roundedRoot = Math.max(512, Math.ceil(rootEntries / 16) * 16);
  if (roundedRoot > 0xfff0) throw new EdgekitError(`${what}: the root directory needs ${rootEntries} entries; FAT16 allows ${0xfff0}`);
  const order: FatType[] = fatType ? [fatType] : size >= FAT32_PREFERRED_FROM ? ['fat32', 'fat16'] : ['fat16', 'fat32'];
  for (const t of order) {
    const g = tryType(t, totalSectors, roundedRoot);
    if (g) return g;
  }
  const names = order.map((t) => t.toUpperCase()).join(' or ');
  throw new EdgekitError(`${what}: ${size} bytes cannot hold a valid ${names} filesystem (FAT16 needs about 2.1 MB, FAT32 about 33 MB)`);
}
