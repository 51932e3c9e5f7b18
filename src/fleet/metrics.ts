/** /metrics in the Prometheus text exposition format (version 0.0.4). */
import type { FleetService } from './service.js';

export class Metrics {
  private readonly requests = new Map<string, number>();

  countRequest(route: string, status: number): void {
    const key = `route="${route}",code="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  async render(service: FleetService): Promise<string> {
    const out: string[] = [];
    const family = (name: string, type: 'counter' | 'gauge', help: string, samples: Array<[string, number]>) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [labels, v] of samples) out.push(`${name}${labels ? `{${labels}}` : ''} ${v}`);
    };
    family('edgekit_fleet_http_requests_total', 'counter', 'HTTP requests by route and status code since start.',
      [...this.requests].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    const devices = await service.store.deviceCountsByStatus();
    family('edgekit_fleet_devices', 'gauge', 'Devices in the inventory by status.',
      ['accepted', 'pending', 'rejected'].map((s) => [`status="${s}"`, devices[s] ?? 0]));
    const reports = await service.store.reportCountsByState();
    family('edgekit_fleet_reports_total', 'counter', 'Distinct device reports stored, by state.',
      Object.entries(reports).map(([s, n]) => [`state="${s}"`, n]));
    const rollouts = await service.listRollouts();
    family('edgekit_fleet_rollout_stage', 'gauge', 'Index (from 1) of the stage each rollout has open.',
      rollouts.map((r) => [`rollout="${r.id}",version="${r.version}",channel="${r.channel}",state="${r.state}"`, r.stage + 1]));
    family('edgekit_fleet_rollout_devices', 'gauge', 'Devices offered a rollout, by progress.',
      rollouts.flatMap((r) => (['offered', 'inProgress', 'succeeded', 'failed'] as const).map((k): [string, number] => [`rollout="${r.id}",progress="${k}"`, r.counts[k]])));
    return `${out.join('\n')}\n`;
  }
}
