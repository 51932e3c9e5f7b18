/**
 * The release repository's files for devices (`edgekit serve --repo <dir>`): metadata/ and
 * targets/ of the static TUF repository, read-only, with HTTP byte ranges so an interrupted
 * download resumes where it stopped. Nothing here is trusted by the device: it checks every file
 * against the signed metadata and its own root keys. Only plain names below metadata/ and
 * targets/ are served (no dot-files such as the publisher's staging folders, no `..`).
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface RepoFiles {
  /** The repository folder (holding metadata/ and targets/). */
  dir: string;
}

/**
 * `metadata/<file>` or `targets/<dirs>/<file>`: segments of plain characters, none starting with a
 * dot; and repo.json (the expiry policy, not secret), which only the admin routes ask for.
 */
const SERVED = /^(repo\.json|metadata\/[A-Za-z0-9_][A-Za-z0-9._-]*|targets(\/[A-Za-z0-9_][A-Za-z0-9._+-]*)+)$/;

export type Range = { start: number; end: number } | 'unsatisfiable' | null;

/** One `bytes=` range of a file of `size` bytes (inclusive end); null for none or several (send it all). */
export function parseRange(header: string | undefined, size: number): Range {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return null;
  if (m[1] === '') {
    const n = Number(m[2]);
    if (n === 0) return 'unsatisfiable';
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}

/**
 * Answers a GET or HEAD for `rel` (the path below the repository URL); returns the HTTP status
 * sent. Errors reading the file after the headers went out end the connection, which the
 * device's downloader treats as a dropped link.
 */
export async function serveRepoFile(repo: RepoFiles, rel: string, req: IncomingMessage, res: ServerResponse): Promise<number> {
  const plain = (status: number, text: string, extra: Record<string, string> = {}) => {
    const body = Buffer.from(`${JSON.stringify({ error: text })}\n`);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': body.length, ...extra });
    res.end(req.method === 'HEAD' ? undefined : body);
    return status;
  };
  if (!SERVED.test(rel) || rel.split('/').some((s) => s === '..')) return plain(404, `not a repository file: ${rel}`);
  let fh: FileHandle;
  try {
    fh = await open(join(repo.dir, rel), 'r');
  } catch {
    return plain(404, `no such repository file: ${rel}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) return plain(404, `no such repository file: ${rel}`);
    const range = parseRange(req.headers.range, st.size);
    if (range === 'unsatisfiable') return plain(416, `range ${req.headers.range} is outside the ${st.size} bytes of ${rel}`, { 'content-range': `bytes */${st.size}` });
    const { start, end } = range ?? { start: 0, end: st.size - 1 };
    const status = range ? 206 : 200;
    res.writeHead(status, {
      'content-type': rel.endsWith('.json') ? 'application/json' : 'application/octet-stream',
      'content-length': end - start + 1,
      'accept-ranges': 'bytes',
      // Targets are named by their content and never change; timestamp.json is rewritten in place.
      'cache-control': rel.startsWith('targets/') ? 'public, max-age=31536000, immutable' : 'no-cache',
      ...(range ? { 'content-range': `bytes ${start}-${end}/${st.size}` } : {}),
    });
    if (req.method === 'HEAD' || st.size === 0) {
      res.end();
      return status;
    }
    await pipeline(fh.createReadStream({ start, end, autoClose: false }), res).catch(() => res.destroy());
    return status;
  } finally {
    await fh.close();
  }
}
