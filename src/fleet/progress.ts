/**
 * A rollout's progress stage by stage, for operators (dashboard, `edgekit fleet rollouts status`).
 * Stage membership and the failure ratio are counted as the rollout engine counts them
 * (service.ts tally): matching accepted devices of the channel, a device's stage fixed by its
 * membership or else by its bucket, and a device that already runs the version counts as a success.
 */
import { deviceBucket, matchesFilter, stageOfBucket } from './rollout.js';
import type { MemberRow, RolloutCandidate, RolloutRow } from './store/store.js';

export interface StageProgress {
  /** From 1. */
  stage: number;
  percent: number;
  waitSeconds: number;
  /** The stage has been opened (devices in it are offered the release). */
  open: boolean;
  /** Matching devices that belong to this stage. */
  devices: number;
  offered: number;
  inProgress: number;
  succeeded: number;
  failed: number;
  /** Devices of the stage that already ran the version without being offered it. */
  alreadyOn: number;
  /** failed / devices. */
  failureRatio: number;
}

export interface RolloutProgress {
  id: string;
  state: RolloutRow['state'];
  /** Index from 1 of the stage open now. */
  stage: number;
  maxFailureRatio: number;
  minSuccessRatio: number;
  /** Over the stages opened so far: what pauses the rollout when above maxFailureRatio. */
  failureRatio: number;
  successRatio: number;
  stages: StageProgress[];
}

export function rolloutProgress(r: RolloutRow, candidates: RolloutCandidate[], members: MemberRow[]): RolloutProgress {
  const byDevice = new Map(members.map((m) => [m.deviceId, m]));
  const stages: StageProgress[] = r.stages.map((s, i) => ({
    stage: i + 1, percent: s.percent, waitSeconds: s.waitSeconds, open: i <= r.stage,
    devices: 0, offered: 0, inProgress: 0, succeeded: 0, failed: 0, alreadyOn: 0, failureRatio: 0,
  }));
  for (const d of candidates) {
    if (!matchesFilter(r.filter, d)) continue;
    const m = byDevice.get(d.id);
    const i = m ? m.stage : stageOfBucket(r.stages, deviceBucket(r.id, d.id));
    const s = stages[i];
    if (!s) continue;
    s.devices++;
    if (!m) {
      if (d.version === r.version) s.alreadyOn++;
      continue;
    }
    s.offered++;
    if (m.state === 'succeeded') s.succeeded++;
    else if (m.state === 'failed') s.failed++;
    else if (m.state !== 'offered') s.inProgress++;
  }
  for (const s of stages) s.failureRatio = s.devices ? s.failed / s.devices : 0;
  const opened = stages.filter((s) => s.open);
  const population = opened.reduce((n, s) => n + s.devices, 0);
  const failed = opened.reduce((n, s) => n + s.failed, 0);
  const succeeded = opened.reduce((n, s) => n + s.succeeded + s.alreadyOn, 0);
  return {
    id: r.id, state: r.state, stage: r.stage + 1, maxFailureRatio: r.maxFailureRatio, minSuccessRatio: r.minSuccessRatio,
    failureRatio: population ? failed / population : 0,
    successRatio: population ? succeeded / population : 1,
    stages,
  };
}
