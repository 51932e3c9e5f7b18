/**
 * The signed Release data of one suite: which index files exist and their sha256, and whether the
 * file is fresh (Date not in the future, Valid-Until not past) and is the suite we asked for.
 */
import { EdgekitError } from '../util/errors.js';
import { parseStanzas } from './control.js';

export interface ReleaseFile {
  fields: Record<string, string>;
  /** path relative to dists/<suite>/ -> { sha256, size } */
  sha256: Map<string, { sha256: string; size: number }>;
  acquireByHash: boolean;
}

export function parseRelease(signedText: string): ReleaseFile {
  const [fields] = parseStanzas(signedText);
  if (!fields) throw new Error('empty Release');
  const sha256 = new Map<string, { sha256: string; size: number }>();
  for (const line of (fields.SHA256 ?? '').split('\n')) {
    const parts = line.trim().split(/\s+/);
    if (parts.length === 3) sha256.set(parts[2], { sha256: parts[0].toLowerCase(), size: Number(parts[1]) });
  }
  return { fields, sha256, acquireByHash: (fields['Acquire-By-Hash'] ?? '').toLowerCase() === 'yes' };
}

/** Clock skew tolerated for a Date ahead of ours, as apt does by default-ish; a day is generous. */
const MAX_FUTURE_MS = 24 * 3600 * 1000;

export interface FreshnessOptions {
  now: Date;
  /** Offline builds reuse a cached InRelease: its signature still counts, its expiry cannot. */
  ignoreValidUntil?: boolean;
}

export function checkRelease(rel: ReleaseFile, suite: string, where: string, opts: FreshnessOptions): void {
  const { Suite, Codename } = rel.fields;
  if (Suite !== suite && Codename !== suite) {
    throw new EdgekitError(`${where}: is for suite ${Codename ?? Suite ?? '(none)'}, not ${suite}`);
  }
  const date = rel.fields.Date ? Date.parse(rel.fields.Date) : NaN;
  if (Number.isNaN(date)) throw new EdgekitError(`${where}: missing or unreadable Date`);
  if (date - opts.now.getTime() > MAX_FUTURE_MS) {
    throw new EdgekitError(`${where}: Date ${rel.fields.Date} is in the future (check the system clock)`);
  }
  const validUntil = rel.fields['Valid-Until'];
  if (validUntil && !opts.ignoreValidUntil) {
    const until = Date.parse(validUntil);
    if (Number.isNaN(until)) throw new EdgekitError(`${where}: unreadable Valid-Until`);
    if (until < opts.now.getTime()) throw new EdgekitError(`${where}: expired (Valid-Until ${validUntil})`);
  }
}
