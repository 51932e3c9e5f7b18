import { z } from 'zod';

const UNITS: Record<string, number> = { '': 1, B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** Sizes are written like `64MiB` in YAML; a bare number is bytes. */
export function parseSize(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 0 ? v : undefined;
  const m = /^\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*$/.exec(v);
  if (!m) return undefined;
  return Number(m[1]) * UNITS[m[2] ?? ''];
}

export const sizeSchema = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = parseSize(v);
  if (n === undefined) {
    ctx.addIssue({ code: 'custom', message: `not a size: ${JSON.stringify(v)} (write e.g. 64MiB)` });
    return z.NEVER;
  }
  return n;
});

export function formatSize(n: number): string {
  if (n % 1024 ** 3 === 0 && n > 0) return `${n / 1024 ** 3}GiB`;
  if (n % 1024 ** 2 === 0 && n > 0) return `${n / 1024 ** 2}MiB`;
  if (n % 1024 === 0 && n > 0) return `${n / 1024}KiB`;
  return `${n}B`;
}
