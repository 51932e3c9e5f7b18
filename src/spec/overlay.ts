/**
 * An overlay (overlays/<name>/): a reusable layer with packages, services and a files/ folder
 * copied into the root as is (an executable file stays executable, everything is owned by root).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { EdgekitError } from '../util/errors.js';
import { loadYamlFile } from './load.js';
import { packageDir } from './paths.js';

export const overlaySchema = z.strictObject({
  schema: z.literal(1),
  name: z.string(),
  description: z.string().optional(),
  packages: z.array(z.string()).default([]),
  services: z
    .array(z.strictObject({ name: z.string().regex(/^[a-z0-9][a-z0-9-_]*$/), command: z.string(), user: z.string().optional() }))
    .default([]),
});

export type Overlay = z.infer<typeof overlaySchema> & { dir: string };

export function loadOverlay(name: string, dir = join(packageDir(), 'overlays')): Overlay {
  const file = join(dir, name, 'overlay.yml');
  if (!existsSync(file)) throw new EdgekitError(`unknown overlay "${name}" (no ${file})`);
  const loaded = loadYamlFile(file, overlaySchema);
  return { ...loaded.value, dir: join(dir, name) };
}
