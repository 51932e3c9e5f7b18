/**
 * Rollout rules as pure functions: which stage a device belongs to, whether a device matches the
 * rollout's filter, and what a rollout should do next given its counts. Membership is a hash of
 * (rollout id, device id), so it is the same on every server start and every replica.
 */
import { createHash } from 'node:crypto';
import type { RolloutCandidate, RolloutFilter, RolloutRow, RolloutStage } from './store/store.js';

/** Buckets per 100%: stage percents are honoured to 0.01%. */
const BUCKETS = 10_000;

/**
 * Buckets already hashed, per rollout: a running rollout's counts are taken every second over all
 * its channel's devices, and every check-in asks again. Cleared when it holds more than
 * MAX_KEPT_BUCKETS (a miss only costs a hash).
 */
const keptBuckets = new Map<string, Map<string, number>>();
const MAX_KEPT_BUCKETS = 500_000;
let keptCount = 0;

export function deviceBucket(rolloutId: string, deviceId: string): number {
  let kept = keptBuckets.get(rolloutId);
  const known = kept?.get(deviceId);
  if (known !== undefined) return known;
  const bucket = createHash('sha256').update(`${rolloutId}\n${deviceId}`, 'utf8').digest().readUInt32BE(0) % BUCKETS;
  if (keptCount >= MAX_KEPT_BUCKETS) (keptBuckets.clear(), (keptCount = 0), (kept = undefined));
  if (!kept) keptBuckets.set(rolloutId, (kept = new Map()));
  kept.set(deviceId, bucket);
  keptCount++;
  return bucket;
}

/** The index of the first stage that includes the device. */
export function stageOfBucket(stages: RolloutStage[], bucket: number): number {
  const i = stages.findIndex((s) => bucket < Math.round(s.percent * (BUCKETS / 100)));
  return i < 0 ? stages.length : i;
}

export function matchesFilter(filter: RolloutFilter, d: Pick<RolloutCandidate, 'board' | 'tags'>): boolean {
  if (filter.board && d.board !== filter.board) return false;
  return filter.tags.every((t) => d.tags.includes(t));
}

export interface StageTally {
  /** Matching accepted devices in the stages opened so far. */
  population: number;
  succeeded: number;
  failed: number;
}

export type Decision =
  | { kind: 'none' }
  | { kind: 'pause'; reason: string }
  | { kind: 'advance'; stage: number }
  | { kind: 'complete' };

/** What a running rollout does next. `now` and stageStartedAt are unix milliseconds. */
export function decide(r: RolloutRow, t: StageTally, now: number): Decision {
  if (r.state !== 'running') return { kind: 'none' };
  const failureRatio = t.population ? t.failed / t.population : 0;
  if (failureRatio > r.maxFailureRatio) {
    return { kind: 'pause', reason: `failure ratio ${fmt(failureRatio)} (${t.failed}/${t.population}) in stages 1-${r.stage + 1} exceeds ${fmt(r.maxFailureRatio)}` };
  }
  const successRatio = t.population ? t.succeeded / t.population : 1;
  if (successRatio < r.minSuccessRatio) return { kind: 'none' };
  const next = r.stage + 1;
  if (next >= r.stages.length) return { kind: 'complete' };
  if (now - r.stageStartedAt < r.stages[next].waitSeconds * 1000) return { kind: 'none' };
  return { kind: 'advance', stage: next };
}

const fmt = (x: number) => x.toFixed(3);

/** Checks stage lists a user gives: percents in (0, 100], strictly increasing. Returns a reason or null. */
export function stagesProblem(stages: RolloutStage[]): string | null {
  if (!stages.length) return 'a rollout needs at least one stage';
  for (let i = 0; i < stages.length; i++) {
    const s = stages[i];
    if (!(s.percent > 0 && s.percent <= 100)) return `stage ${i + 1}: percent ${s.percent} is not in (0, 100]`;
    if (i && s.percent <= stages[i - 1].percent) return `stage ${i + 1}: percent ${s.percent} does not grow from ${stages[i - 1].percent}`;
  }
  return null;
}
