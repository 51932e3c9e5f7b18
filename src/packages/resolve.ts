/**
 * Dependency resolution over a package index: Pre-Depends and Depends, alternatives, virtual
 * packages (Provides) and version constraints. Deterministic: the same index, names and lock give
 * the same result on every machine.
 */
import { comparePaths } from '../tree/tree.js';
import { EdgekitError } from '../util/errors.js';
import { formatAtom, parseDepends, type DepAtom } from './control.js';
import type { LockFile, PackageRecord, ResolvedPackage, ResolveOptions } from './types.js';
import { compareVersions, satisfies } from './version.js';

interface Provider {
  pkg: PackageRecord;
  version?: string; // the provided version, for versioned Provides
}

export class PackageIndex {
  /** name -> every version seen across suites, highest first */
  private readonly byName = new Map<string, PackageRecord[]>();
  private readonly providers = new Map<string, Provider[]>();

  constructor(records: Iterable<PackageRecord>) {
    for (const r of records) {
      const list = this.byName.get(r.name) ?? [];
      if (!list.some((x) => x.version === r.version && x.sha256 === r.sha256)) list.push(r);
      this.byName.set(r.name, list);
    }
    for (const list of this.byName.values()) {
      // Highest version first; ties (same version in two suites) keep suite order, so it is stable.
      list.sort((a, b) => compareVersions(b.version, a.version));
      for (const r of list) {
        for (const group of parseDepends(r.provides)) {
          for (const p of group) {
            const l = this.providers.get(p.name) ?? [];
            l.push({ pkg: r, version: p.version });
            this.providers.set(p.name, l);
          }
        }
      }
    }
  }

  versions(name: string): PackageRecord[] {
    return this.byName.get(name) ?? [];
  }
  providersOf(name: string): Provider[] {
    return this.providers.get(name) ?? [];
  }
  all(): PackageRecord[] {
    return [...this.byName.values()].flat();
  }
}

function toResolved(r: PackageRecord, depends: Set<string>): ResolvedPackage {
  const out: ResolvedPackage = {
    name: r.name,
    version: r.version,
    arch: r.arch,
    filename: r.filename,
    size: r.size,
    sha256: r.sha256,
    suite: r.suite,
    depends: [...depends].sort(comparePaths),
  };
  if (r.source) out.source = r.source;
  return out;
}

export function resolveInIndex(index: PackageIndex, names: string[], where: string, opts: ResolveOptions = {}): ResolvedPackage[] {
  const excluded = new Set(opts.excludes ?? []);
  const locked = new Map((opts.lock?.packages ?? []).map((p) => [p.name, p]));
  const selected = new Map<string, PackageRecord>();
  const deps = new Map<string, Set<string>>();
  const queue: PackageRecord[] = [];

  /** Candidates for a real package name: the locked version only, or all versions highest first. */
  const candidates = (name: string): PackageRecord[] => {
    const all = index.versions(name);
    const lock = locked.get(name);
    if (!lock || all.length === 0) return all;
    const exact = all.find((r) => r.version === lock.version);
    if (!exact) throw new EdgekitError(`locked package ${name} ${lock.version} is not available in ${where}`);
    if (exact.sha256 !== lock.sha256) {
      throw new EdgekitError(`locked package ${name} ${lock.version}: sha256 in the lock differs from ${where}`);
    }
    return [exact];
  };

  const atomSatisfiedBySelected = (a: DepAtom): PackageRecord | undefined => {
    const real = selected.get(a.name);
    if (real && (!a.relation || satisfies(real.version, a.relation, a.version!))) return real;
    for (const p of index.providersOf(a.name)) {
      const sel = selected.get(p.pkg.name);
      if (sel !== p.pkg) continue;
      if (!a.relation || (p.version && satisfies(p.version, a.relation, a.version!))) return sel;
    }
    return undefined;
  };

  const pickForAtom = (a: DepAtom): PackageRecord | undefined => {
    const real = candidates(a.name).find((r) => !a.relation || satisfies(r.version, a.relation, a.version!));
    if (real) return real;
    const providers = index
      .providersOf(a.name)
      .filter((p) => !a.relation || (p.version && satisfies(p.version, a.relation, a.version!)))
      .map((p) => p.pkg)
      .filter((pkg) => !selected.has(pkg.name) || selected.get(pkg.name) === pkg)
      .filter((pkg) => !locked.has(pkg.name) || locked.get(pkg.name)!.version === pkg.version);
    // Prefer a locked provider, then the first by name: never map order.
    providers.sort((x, y) => Number(locked.has(y.name)) - Number(locked.has(x.name)) || comparePaths(x.name, y.name));
    return providers[0];
  };

  const select = (r: PackageRecord, wantedBy: string): void => {
    const already = selected.get(r.name);
    if (already) {
      if (already !== r) {
        throw new EdgekitError(`${wantedBy} needs ${r.name} ${r.version}, but ${already.version} is already chosen (${where})`);
      }
      return;
    }
    selected.set(r.name, r);
    deps.set(r.name, new Set());
    queue.push(r);
  };

  for (const name of names) {
    if (excluded.has(name) || selected.has(name)) continue;
    const r = pickForAtom({ name });
    if (!r) throw new EdgekitError(`unknown package ${name} (searched ${where})`);
    select(r, name);
  }

  for (let i = 0; i < queue.length; i++) {
    const pkg = queue[i];
    const groups = [...parseDepends(pkg.preDepends), ...parseDepends(pkg.depends)];
    for (const group of groups) {
      if (group.some((a) => excluded.has(a.name))) continue;
      let chosen: PackageRecord | undefined;
      for (const a of group) if ((chosen = atomSatisfiedBySelected(a))) break;
      if (!chosen) {
        for (const a of group) if ((chosen = pickForAtom(a))) break;
        if (!chosen) {
          const text = group.map(formatAtom).join(' | ');
          throw new EdgekitError(`${pkg.name} ${pkg.version} depends on ${text}, which nothing in ${where} provides`);
        }
        select(chosen, `${pkg.name} ${pkg.version}`);
      }
      if (chosen.name !== pkg.name) deps.get(pkg.name)!.add(chosen.name);
    }
  }

  return [...selected.values()].sort((a, b) => comparePaths(a.name, b.name)).map((r) => toResolved(r, deps.get(r.name)!));
}

/**
 * Resolution from the lock alone, when it covers every requested name and, transitively, every
 * dependency: no index is needed then (an offline build). Returns undefined when the lock is incomplete.
 */
export function resolveFromLock(lock: LockFile, names: string[], excludes: string[] = []): ResolvedPackage[] | undefined {
  const excluded = new Set(excludes);
  const byName = new Map(lock.packages.map((p) => [p.name, p]));
  const seen = new Map<string, ResolvedPackage>();
  const stack = names.filter((n) => !excluded.has(n));
  while (stack.length > 0) {
    const name = stack.pop()!;
    if (seen.has(name) || excluded.has(name)) continue;
    const p = byName.get(name);
    if (!p) return undefined;
    seen.set(name, p);
    stack.push(...p.depends);
  }
  return [...seen.values()].sort((a, b) => comparePaths(a.name, b.name)).map((p) => ({ ...p, depends: [...p.depends] }));
}
