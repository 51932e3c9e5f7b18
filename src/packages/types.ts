/** One binary package as an index (Packages file or a folder of .debs) describes it. */
export interface PackageRecord {
  name: string;
  version: string;
  arch: string; // the build's arch, or 'all'
  filename: string; // path under the source's base URL (pool/main/b/busybox/...), or file name in a folder
  size: number;
  sha256: string;
  suite: string; // which suite (or 'local' for a folder) it came from
  source?: string; // 'name version' of the source package
  depends?: string; // raw Depends field
  preDepends?: string; // raw Pre-Depends field
  provides?: string; // raw Provides field
}

/** A package chosen by resolution: what a build installs and a lock file records. */
export interface ResolvedPackage {
  name: string;
  version: string;
  arch: string;
  filename: string;
  size: number;
  sha256: string;
  suite: string;
  source?: string; // 'srcname srcversion', for the SBOM
  depends: string[]; // names of the resolved packages that satisfy its Pre-Depends and Depends, sorted
}

/**
 * The packages part of a lock file: the resolved set, verbatim. Because each entry carries its
 * dependencies, the filename, size and sha256, a lock that covers a build lets it resolve and
 * fetch without reading any index (see Archive.resolve).
 */
export interface LockFile {
  packages: ResolvedPackage[];
}

export interface ResolveOptions {
  lock?: LockFile;
  /** Package names never installed; a dependency on one of them counts as satisfied. */
  excludes?: string[];
}

export interface Archive {
  /** Human-readable list of what is searched, for error messages ('trixie, trixie-updates at …'). */
  readonly where: string;
  resolve(names: string[], opts?: ResolveOptions): Promise<ResolvedPackage[]>;
  /** Path of the verified .deb in the cache (`cacheDir('debs')`), downloading it if needed. */
  fetch(pkg: ResolvedPackage, onProgress?: (done: number, total: number | undefined) => void): Promise<string>;
  /** Every package record the index holds (loads the index). */
  records(): Promise<PackageRecord[]>;
}
