import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * One folder per test run for images that several test files share (building them is the slow
 * part; QEMU tests boot the same images). Workers inherit the variable.
 */
export default function setup(): () => void {
  const dir = mkdtempSync(join(tmpdir(), 'edgekit-test-'));
  process.env.EDGEKIT_TEST_DIR = dir;
  return () => {
    if (!process.env.EDGEKIT_KEEP_TEST_DIR) rmSync(dir, { recursive: true, force: true });
  };
}
