/**
 * Trusted time for boards without a real-time clock. Such a board boots with its clock at some
 * arbitrary point (often 1970, or the image's build time), so "is this metadata expired?" needs a
 * time the device can defend. The rule:
 *
 * - The device keeps a trusted time T in its state folder; T never goes down.
 * - Metadata is checked against max(device clock, T, the image's build time): a clock that went
 *   backwards cannot make expired metadata look fresh again.
 * - After a successful refresh T rises to max(that reference time, the accepted timestamp's signed
 *   `edgekit_issued` time).
 * - After a failed refresh T rises to the device clock, but never past the newest accepted
 *   timestamp's expiry. So a clock that ran wildly ahead once cannot lock a device out forever:
 *   the next timestamp the server signs expires later than that cap and is accepted.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../util/atomic.js';

const FILE = 'trusted-time.json';

export async function readTrustedTime(stateDir: string): Promise<Date | undefined> {
  try {
    const { time } = JSON.parse(await readFile(join(stateDir, FILE), 'utf8')) as { time?: string };
    const d = time ? new Date(time) : undefined;
    return d && !Number.isNaN(d.getTime()) ? d : undefined;
  } catch {
    return undefined;
  }
}

/** Records `candidate` if it is later than what is stored; returns the trusted time afterwards. */
export async function raiseTrustedTime(stateDir: string, candidate: Date): Promise<Date> {
  const current = await readTrustedTime(stateDir);
  if (current && current.getTime() >= candidate.getTime()) return current;
  await writeFileAtomic(join(stateDir, FILE), JSON.stringify({ time: candidate.toISOString() }) + '\n');
  return candidate;
}

export function latest(...dates: (Date | undefined)[]): Date {
  return new Date(Math.max(...dates.filter((d): d is Date => d !== undefined).map((d) => d.getTime())));
}
