/**
 * Finds a Debian mirror in the host's apt configuration (read only: the builder never runs apt and
 * never changes its configuration). A source counts as Debian when its Release file says
 * `Origin: Debian`; apt keeps a copy of it under /var/lib/apt/lists/, so usually no network is needed.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { EdgekitError } from '../util/errors.js';
import { parseStanzas } from './control.js';
import { fetchBuffer } from './http.js';

export interface AptSource {
  uri: string; // without trailing slash
  suites: string[];
  components: string[];
  file: string; // where it was declared, for messages
}

/** `root` lets tests point at a fake filesystem root; it defaults to the host's. */
export interface HostOptions {
  root?: string;
}

function parseOneLineSources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line.startsWith('deb ') && !line.startsWith('deb\t')) continue;
    const words = line
      .slice(3)
      .replace(/\[[^\]]*\]/, ' ')
      .trim()
      .split(/\s+/);
    if (words.length < 2) continue;
    out.push({ uri: words[0].replace(/\/+$/, ''), suites: [words[1]], components: words.slice(2), file });
  }
  return out;
}

function parseDeb822Sources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const s of parseStanzas(text)) {
    if ((s.Enabled ?? 'yes').toLowerCase() === 'no') continue;
    if (!(s.Types ?? '').split(/\s+/).includes('deb')) continue;
    const words = (v?: string) => (v ?? '').split(/\s+/).filter((w) => w !== '');
    for (const uri of words(s.URIs)) {
      out.push({ uri: uri.replace(/\/+$/, ''), suites: words(s.Suites), components: words(s.Components), file });
    }
  }
  return out;
}

/** The host's apt sources in apt's reading order: sources.list, then sources.list.d/ by file name. */
export function hostAptSources(opts: HostOptions = {}): AptSource[] {
  const etc = join(opts.root ?? '/', 'etc/apt');
  const sources: AptSource[] = [];
  const main = join(etc, 'sources.list');
  if (existsSync(main)) sources.push(...parseOneLineSources(readFileSync(main, 'utf8'), main));
  const dir = join(etc, 'sources.list.d');
  const names = existsSync(dir) ? readdirSync(dir).sort() : [];
  for (const name of names) {
    const file = join(dir, name);
    if (name.endsWith('.list')) sources.push(...parseOneLineSources(readFileSync(file, 'utf8'), file));
    else if (name.endsWith('.sources')) sources.push(...parseDeb822Sources(readFileSync(file, 'utf8'), file));
  }
  return sources;
}

/** apt's file name for a downloaded list: the URI without scheme and credentials, '/' turned into '_'. */
function aptListPrefix(uri: string, suite: string): string {
  const noScheme = uri.replace(/^[a-z0-9+.-]+:\/\//i, '').replace(/^[^@/]*@/, '');
  return `${noScheme}/dists/${suite}/`.replace(/_/g, '%5f').replace(/\//g, '_');
}

async function releaseOrigin(uri: string, suite: string, opts: HostOptions): Promise<string | undefined> {
  const lists = join(opts.root ?? '/', 'var/lib/apt/lists');
  const prefix = aptListPrefix(uri, suite);
  for (const name of ['InRelease', 'Release']) {
    const local = join(lists, prefix + name);
    if (existsSync(local)) return releaseField(readFileSync(local, 'utf8'), 'Origin');
  }
  try {
    const body = await fetchBuffer(`${uri}/dists/${suite}/InRelease`);
    return releaseField(body.toString('utf8'), 'Origin');
  } catch {
    return undefined; // an unreachable or non-Debian source is simply not a candidate
  }
}

function releaseField(text: string, name: string): string | undefined {
  const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(text);
  return m?.[1].trim();
}

async function firstDebianSource(pick: (suite: string) => boolean, opts: HostOptions): Promise<string | undefined> {
  for (const src of hostAptSources(opts)) {
    for (const suite of src.suites.filter(pick)) {
      if ((await releaseOrigin(src.uri, suite, opts)) === 'Debian') return src.uri;
    }
  }
  return undefined;
}

const isSecuritySuite = (suite: string) => /-security$|\/updates$/.test(suite);

/** The first host apt source, other than a security one, whose Release says `Origin: Debian`. */
export async function defaultMirror(opts: HostOptions = {}): Promise<string> {
  const found = await firstDebianSource((s) => !isSecuritySuite(s), opts);
  if (!found) {
    throw new EdgekitError(
      "no Debian mirror found in the host's apt sources; pass --mirror <url> or set `mirror:` in the spec",
    );
  }
  return found;
}

/**
 * Debian publishes security updates from a separate tree. This is the first host source with a
 * `<suite>-security` suite whose Release says `Origin: Debian`; if the host has none, the rule is
 * the layout every Debian mirror uses: the main mirror's URL with `-security` appended to it
 * (`…/debian` -> `…/debian-security`).
 */
export async function defaultSecurityMirror(mirror?: string, opts: HostOptions = {}): Promise<string> {
  const found = await firstDebianSource(isSecuritySuite, opts);
  if (found) return found;
  return securityMirrorFor(mirror ?? (await defaultMirror(opts)));
}

export function securityMirrorFor(mirror: string): string {
  return mirror.replace(/\/+$/, '') + '-security';
}
