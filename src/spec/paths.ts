import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The installed package's root (holds boards/, kernel/, overlays/, keys/), from src/ or dist/. */
export function packageDir(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..');
}
