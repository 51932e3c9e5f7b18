/**
 * The fleet at a glance: how many devices, which versions they run, how many were seen lately and
 * how many are failing (their last report is a failed update or a fall-back to the old slot).
 */
import type { DeviceRow } from './store/store.js';

/** Seen within two of the agent's default check intervals (an hour each) counts as online. */
export const DEFAULT_ONLINE_SECONDS = 2 * 3600;
const FAILING_STATES = new Set(['failed', 'rolled-back']);

export interface FleetOverview {
  at: number;
  onlineWithinSeconds: number;
  devices: { total: number; accepted: number; pending: number; rejected: number };
  /** Accepted devices seen within onlineWithinSeconds. */
  online: number;
  /** Accepted devices whose last report is failed or rolled-back. */
  failing: number;
  /** Accepted devices per version they run (null: never checked in), most common first. */
  versions: Array<{ version: string | null; devices: number; online: number; failing: number }>;
  channels: Array<{ channel: string; devices: number }>;
  /** Up to 50 failing devices, latest report first. */
  failingDevices: Array<{ id: string; version: string | null; state: string; reason: string | null; at: number }>;
}

export function fleetOverview(devices: DeviceRow[], now: number, onlineWithinSeconds = DEFAULT_ONLINE_SECONDS): FleetOverview {
  const o: FleetOverview = {
    at: now, onlineWithinSeconds, devices: { total: devices.length, accepted: 0, pending: 0, rejected: 0 }, online: 0, failing: 0,
    versions: [], channels: [], failingDevices: [],
  };
  const versions = new Map<string | null, FleetOverview['versions'][number]>();
  const channels = new Map<string, number>();
  for (const d of devices) {
    o.devices[d.status]++;
    if (d.status !== 'accepted') continue;
    const online = d.lastSeen !== null && now - d.lastSeen <= onlineWithinSeconds * 1000;
    const failing = !!d.lastReport && FAILING_STATES.has(d.lastReport.state);
    const v = versions.get(d.version) ?? { version: d.version, devices: 0, online: 0, failing: 0 };
    v.devices++;
    if (online) (v.online++, o.online++);
    if (failing) {
      v.failing++;
      o.failing++;
      const r = d.lastReport!;
      o.failingDevices.push({ id: d.id, version: d.version, state: r.state, reason: r.reason, at: r.receivedAt });
    }
    versions.set(d.version, v);
    channels.set(d.channel, (channels.get(d.channel) ?? 0) + 1);
  }
  o.versions = [...versions.values()].sort((a, b) => b.devices - a.devices || (String(a.version) < String(b.version) ? -1 : 1));
  o.channels = [...channels].map(([channel, n]) => ({ channel, devices: n })).sort((a, b) => (a.channel < b.channel ? -1 : 1));
  o.failingDevices = o.failingDevices.sort((a, b) => b.at - a.at).slice(0, 50);
  return o;
}
