/**
 * Where a kernel comes from (kernel/<id>.yml): a Debian package, which modules to keep for which
 * purpose, hardening command-line defaults, and what the kernel can and cannot do (e.g. tryboot).
 */
import { join } from 'node:path';
import { readdirSync } from 'node:fs';
import { z } from 'zod';
import { EdgekitError } from '../util/errors.js';
import { loadYamlFile, type Loaded } from './load.js';
import { packageDir } from './paths.js';

export const kernelSchema = z.strictObject({
  schema: z.literal(1, { message: 'this edgekit reads kernel files with `schema: 1`' }),
  id: z.string().regex(/^[a-z0-9][a-z0-9-_.]*$/),
  name: z.string(),
  arch: z.enum(['amd64', 'arm64']),
  /** Debian package (a meta package is fine: it is resolved to the versioned image package). */
  package: z.string(),
  /** Modules kept for each purpose; their dependencies are worked out from each module's depends=. */
  modules: z.strictObject({
    /** Reading a read-only root slot: squashfs and dm-verity. */
    rootOnDisk: z.array(z.string()).default([]),
    /** Mounting the writable data partition. */
    data: z.array(z.string()).default([]),
    /** Networking, for images that configure a network. */
    network: z.array(z.string()).default([]),
  }),
  /** Hardening defaults on every command line (see docs/boards.md). */
  cmdline: z.array(z.string()).default([]),
  /** Can arm the Raspberry Pi firmware's one-time `tryboot` (Debian's kernel cannot). */
  tryboot: z.boolean().default(false),
});

export type Kernel = z.infer<typeof kernelSchema>;

export function kernelsDir(): string {
  return join(packageDir(), 'kernel');
}

export function loadKernel(id: string, dir = kernelsDir()): Loaded<Kernel> {
  const ids = readdirSync(dir).filter((f) => f.endsWith('.yml')).map((f) => f.slice(0, -4));
  if (!ids.includes(id)) throw new EdgekitError(`unknown kernel "${id}" (kernels: ${ids.sort().join(', ')})`);
  return loadYamlFile(join(dir, `${id}.yml`), kernelSchema);
}
