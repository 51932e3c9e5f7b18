import { EdgekitError } from '../util/errors.js';

/** '30', '30s', '10m', '2h', '1d' -> seconds. */
export function durationSeconds(v: string, flag: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(v.trim());
  if (!m) throw new EdgekitError(`${flag}: a duration like 30s, 10m, 2h or 1d, not ${JSON.stringify(v)}`);
  return Number(m[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
}
