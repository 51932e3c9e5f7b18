/**
 * deb822 control data: the stanza format of Packages, Release and DEBIAN/control files, and the
 * dependency fields (Depends, Pre-Depends, Provides) inside them.
 */

export type Stanza = Record<string, string>;

/**
 * Splits deb822 text into stanzas. Continuation lines (leading space or tab) are joined to their
 * field with '\n'; a line ' .' stands for an empty line in multi-line values and is kept verbatim.
 * `keep`, when given, limits which fields are stored, so a 60 MB Packages file stays small in memory.
 */
export function parseStanzas(text: string, keep?: ReadonlySet<string>): Stanza[] {
  const stanzas: Stanza[] = [];
  let current: Stanza = {};
  let has = false;
  let field: string | null = null;
  let start = 0;
  const n = text.length;
  while (start <= n) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = n;
    let line = text.slice(start, end);
    start = end + 1;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim() === '') {
      if (has) stanzas.push(current);
      current = {};
      has = false;
      field = null;
      if (end === n) break;
      continue;
    }
    const first = line.charCodeAt(0);
    if (first === 32 || first === 9) {
      if (field !== null) current[field] += '\n' + line.slice(1);
      continue;
    }
    if (first === 35 /* # */) continue;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`malformed control line: ${line.slice(0, 80)}`);
    const name = line.slice(0, colon);
    has = true;
    if (keep && !keep.has(name)) {
      field = null;
      continue;
    }
    field = name;
    current[name] = line.slice(colon + 1).trim();
    if (end === n) break;
  }
  if (has) stanzas.push(current);
  return stanzas;
}

/** One alternative of a dependency: `name [(rel version)]`, the `:any`/`:native` qualifier dropped. */
export interface DepAtom {
  name: string;
  relation?: string;
  version?: string;
}
/** A dependency field: AND of groups, each an OR of alternatives. */
export type DepGroups = DepAtom[][];

const ATOM = /^([a-z0-9][a-z0-9+.-]*)(?::[a-z0-9-]+)?\s*(?:\(\s*(<<|<=|>=|>>|=|<|>)\s*([^\s)]+)\s*\))?\s*(?:\[[^\]]*\])?\s*(?:<[^>]*>)?$/i;

export function parseDepends(field: string | undefined): DepGroups {
  if (!field) return [];
  return field
    .split(',')
    .map((g) => g.trim())
    .filter((g) => g !== '')
    .map((group) =>
      group.split('|').map((alt) => {
        const m = ATOM.exec(alt.trim().replace(/\s+/g, ' '));
        if (!m) throw new Error(`malformed dependency: ${alt.trim()}`);
        return m[2] ? { name: m[1], relation: m[2], version: m[3] } : { name: m[1] };
      }),
    );
}

export function formatAtom(a: DepAtom): string {
  return a.relation ? `${a.name} (${a.relation} ${a.version})` : a.name;
}
