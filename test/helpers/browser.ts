/**
 * A real headless Chromium (Debian's chromium package) driven by playwright-core. No fallback: a
 * machine without the package fails the test that needs it, saying what to install.
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

/** The Debian binary itself (/usr/bin/chromium is a shell wrapper around it). */
const CANDIDATES = ['/usr/lib/chromium/chromium', '/usr/bin/chromium'];

export async function launchChromium(): Promise<Browser> {
  const executablePath = CANDIDATES.find((p) => existsSync(p));
  if (!executablePath) {
    throw new Error(`Chromium is missing (looked for ${CANDIDATES.join(', ')}): install Debian's chromium package (apt-get install chromium; it is in scripts/system-packages.txt)`);
  }
  // Chromium's sandbox needs user namespaces it does not get when the tests run as root.
  const args = process.getuid?.() === 0 ? ['--no-sandbox'] : [];
  return chromium.launch({ executablePath, args, headless: true });
}

/** Opens the dashboard and signs in with the token, as an operator pasting it would. */
export async function signIn(page: Page, url: string, token: string): Promise<void> {
  await page.goto(`${url}/dashboard/`);
  await page.getByLabel('Admin token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#whoami').waitFor();
}
