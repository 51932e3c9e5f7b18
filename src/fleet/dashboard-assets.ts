/**
 * The dashboard's static files (dashboard/ in the package: plain HTML, CSS and ES modules, no
 * build step), read once when the server starts and served by exact name only, so no request
 * path ever reaches the file system. They hold no data: every figure comes from the admin API
 * with the token the operator pastes.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** Same-origin scripts and API calls only: no inline script, no CDN, no framing. */
export const DASHBOARD_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

export interface Asset {
  type: string;
  data: Buffer;
  etag: string;
}

/** dashboard/ at the package root: two levels above this module in src/fleet and in dist/fleet alike. */
export const DASHBOARD_DIR = fileURLToPath(new URL('../../dashboard/', import.meta.url));

export async function loadDashboardAssets(dir = DASHBOARD_DIR): Promise<Map<string, Asset>> {
  const assets = new Map<string, Asset>();
  for (const name of (await readdir(dir)).sort()) {
    const type = TYPES[extname(name)];
    if (!type) continue;
    const data = await readFile(join(dir, name));
    assets.set(name, { type, data, etag: `"${createHash('sha256').update(data).digest('base64url').slice(0, 22)}"` });
  }
  if (!assets.has('index.html')) throw new Error(`${dir}: the dashboard's index.html is missing`);
  return assets;
}
