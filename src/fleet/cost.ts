/**
 * What a rollout will download before it starts: the devices it would target, grouped into cohorts
 * by the version they run (and board: payloads differ per board), with the bytes each device and
 * each cohort fetches. Sizes come from the release repository's targets metadata (the signed
 * lengths devices check downloads against), so the figure is what the fleet will really pull.
 *
 * A device downloads what the update agent fetches (src/ota/agent/agent.ts): the kernel, the
 * initramfs and the slot's device trees, and the root payload, or instead of it the delta from the
 * version it runs when the release has one.
 */
import type { TargetFile } from '@tufjs/models';
import { readState } from '../ota/repo/metadata-files.js';
import { findReleases } from '../ota/repo/publish.js';
import { compareVersions, type ReleaseCustom } from '../ota/repo/release-info.js';
import { deviceBucket, matchesFilter, stageOfBucket } from './rollout.js';
import type { FleetStore, RolloutFilter, RolloutRow } from './store/store.js';

export interface CostCohort {
  /** The version the devices run (null: never reported one). */
  fromVersion: string | null;
  board: string | null;
  devices: number;
  /** null when the repository has no release of the version for this board. */
  method: 'delta' | 'full' | null;
  bytesPerDevice: number | null;
  bytes: number | null;
  /** The target files each device downloads. */
  files: Array<{ path: string; length: number }>;
  /** Why the size is unknown. */
  problem?: string;
}

export interface RolloutCost {
  version: string;
  channel: string;
  filter: RolloutFilter;
  /** Set when costing an existing rollout: then only the devices it has yet to update count. */
  rolloutId?: string;
  /** Devices that would download the release. */
  devices: number;
  /** Matching devices that already run the version (they download nothing). */
  upToDate: number;
  /** Bytes over the cohorts whose size is known. */
  bytes: number;
  /** Devices in cohorts whose size is unknown (no release for their board, board never reported). */
  unknownDevices: number;
  cohorts: CostCohort[];
}

export interface CostQuery {
  version: string;
  channel: string;
  filter: RolloutFilter;
  /** An existing rollout: devices it already finished with, or that no stage includes, are left out. */
  rollout?: RolloutRow;
}

export async function rolloutCost(store: FleetStore, repo: string, q: CostQuery): Promise<RolloutCost> {
  const targets = (await readState(repo)).targets.signed;
  const finished = new Set<string>();
  const stageOf = new Map<string, number>();
  if (q.rollout) {
    for (const m of await store.listMembers(q.rollout.id)) {
      stageOf.set(m.deviceId, m.stage);
      if (m.state === 'succeeded' || m.state === 'failed') finished.add(m.deviceId);
    }
  }
  const groups = new Map<string, { fromVersion: string | null; board: string | null; devices: number }>();
  let upToDate = 0;
  for (const d of await store.listRolloutCandidates(q.channel)) {
    if (!matchesFilter(q.filter, d)) continue;
    if (d.version === q.version) {
      upToDate++;
      continue;
    }
    if (q.rollout) {
      if (finished.has(d.id)) continue;
      const stage = stageOf.get(d.id) ?? stageOfBucket(q.rollout.stages, deviceBucket(q.rollout.id, d.id));
      if (stage >= q.rollout.stages.length) continue;
    }
    const key = JSON.stringify([d.board, d.version]);
    const g = groups.get(key) ?? { fromVersion: d.version, board: d.board, devices: 0 };
    g.devices++;
    groups.set(key, g);
  }

  const cohorts = [...groups.values()]
    .sort((a, b) => cmp(a.board, b.board) || (a.fromVersion === b.fromVersion ? 0 : a.fromVersion === null ? -1 : b.fromVersion === null ? 1 : compareVersions(a.fromVersion, b.fromVersion)))
    .map((g): CostCohort => {
      const base = { fromVersion: g.fromVersion, board: g.board, devices: g.devices };
      const unknown = (problem: string): CostCohort => ({ ...base, method: null, bytesPerDevice: null, bytes: null, files: [], problem });
      if (!g.board) return unknown('board unknown: the devices have not checked in yet');
      let hits = findReleases(targets, { version: q.version, board: g.board });
      if (hits.length > 1) hits = hits.filter((h) => h.custom.channel === q.channel);
      if (!hits.length) return unknown(`the release repository has no release ${q.version} for board ${g.board}`);
      if (hits.length > 1) return unknown(`the release repository has several images ${q.version} for board ${g.board} (${hits.map((h) => h.custom.name).join(', ')})`);
      const d = downloadFor(hits[0].custom, targets.targets, g.fromVersion);
      if ('problem' in d) return unknown(d.problem);
      const per = d.files.reduce((n, f) => n + f.length, 0);
      return { ...base, method: d.method, bytesPerDevice: per, bytes: per * g.devices, files: d.files };
    });
  return {
    version: q.version,
    channel: q.channel,
    filter: q.filter,
    ...(q.rollout ? { rolloutId: q.rollout.id } : {}),
    devices: cohorts.reduce((n, c) => n + c.devices, 0),
    upToDate,
    bytes: cohorts.reduce((n, c) => n + (c.bytes ?? 0), 0),
    unknownDevices: cohorts.reduce((n, c) => n + (c.bytes === null ? c.devices : 0), 0),
    cohorts,
  };
}

/** The files a device on `fromVersion` downloads to install `release`. */
function downloadFor(release: ReleaseCustom, all: Record<string, TargetFile>, fromVersion: string | null):
  { method: 'delta' | 'full'; files: Array<{ path: string; length: number }> } | { problem: string } {
  const file = (path: string | undefined) => (path && all[path] ? { path, length: all[path].length } : null);
  const kernel = file(release.slot.kernel);
  const initrd = file(release.slot.initrd);
  const dtbs = Object.values(release.slot.devicetrees ?? {}).map(file);
  if (!kernel || !initrd || dtbs.includes(null)) return { problem: `release ${release.version} for ${release.board}: its boot files are missing from targets metadata` };
  const boot = [kernel, initrd, ...(dtbs as Array<{ path: string; length: number }>)];
  const delta = fromVersion === null ? undefined : release.deltas.find((d) => d.fromVersion === fromVersion);
  if (delta) return { method: 'delta', files: [...boot, { path: delta.target, length: delta.length }] };
  const root = file(release.slot.rootPayload);
  if (release.slot.rootPayload && !root) return { problem: `release ${release.version} for ${release.board}: its root payload is missing from targets metadata` };
  return { method: 'full', files: root ? [...boot, root] : boot };
}

const cmp = (a: string | null, b: string | null) => (a === b ? 0 : a === null ? -1 : b === null ? 1 : a < b ? -1 : 1);

