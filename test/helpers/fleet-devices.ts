/**
 * Simulated devices for fleet tests, speaking the protocol through the agent's own client
 * (src/fleet/protocol/client.ts): pre-authorised with a provisioning token, checking in, and
 * reporting an update's steps the way the agent does.
 */
import { generateKeyPairSync } from 'node:crypto';
import { FleetDeviceClient } from '../../src/fleet/protocol/client.js';
import type { CheckInResponse, ReportRequest, SlotName } from '../../src/fleet/protocol/messages.js';
import { api } from './fleet-server.js';

export interface SimDevice {
  id: string;
  client: FleetDeviceClient;
  board: string;
  version: string;
  slot: SlotName;
  checkIn(): Promise<CheckInResponse>;
  /** downloading -> installing -> rebooting -> committed (on the other slot) or rolled-back. */
  update(version: string, healthy: boolean): Promise<void>;
}

export async function provisioningToken(url: string, admin: string, o: { channel?: string; tags?: string[] } = {}): Promise<string> {
  const r = await api(url, admin, 'POST', '/v1/admin/provisioning-tokens', o);
  if (r.status !== 200) throw new Error(`provisioning token: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.token;
}

export async function simDevices(url: string, ids: string[], o: { provisioningToken?: string; board?: string; version?: string }): Promise<SimDevice[]> {
  const out: SimDevice[] = [];
  for (const id of ids) {
    const client = new FleetDeviceClient({ server: url, deviceId: id, privateKey: generateKeyPairSync('ed25519').privateKey, provisioningToken: o.provisioningToken });
    let seq = 0;
    const d: SimDevice = {
      id, client, board: o.board ?? 'qemu-x86_64', version: o.version ?? '1.0', slot: 'a',
      checkIn: () => client.checkIn({ board: d.board, version: d.version, slot: d.slot }),
      async update(version, healthy) {
        const other: SlotName = d.slot === 'a' ? 'b' : 'a';
        const steps: ReportRequest['state'][] = ['downloading', 'installing', 'rebooting', healthy ? 'committed' : 'rolled-back'];
        for (const state of steps) {
          const done = state === 'committed';
          await client.report({
            id: `${id}-${version}-${seq++}`, state, version, running: done ? version : d.version, slot: done ? other : d.slot,
            ...(state === 'rolled-back' ? { reason: 'health check failed after reboot' } : {}),
          });
        }
        if (healthy) (d.version = version), (d.slot = other);
      },
    };
    await client.authenticate();
    out.push(d);
  }
  return out;
}
