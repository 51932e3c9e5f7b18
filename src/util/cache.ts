import { homedir } from 'node:os';
import { join } from 'node:path';

/** Where downloads and derived artifacts are cached, by hash: never inside the repository. */
export function cacheDir(...sub: string[]): string {
  const base =
    process.env.EDGEKIT_CACHE ??
    (process.env.XDG_CACHE_HOME ? join(process.env.XDG_CACHE_HOME, 'edgekit') : join(homedir(), '.cache', 'edgekit'));
  return join(base, ...sub);
}
