/**
 * The store operations several servers race on, against each store, through two separate
 * connections to one database (two pools for PostgreSQL, as two servers would have): a rollout
 * transition happens once, an offer never lands on a rollout that stopped offering, a nonce is used
 * once, audit numbers stay consecutive, one first admin token.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openFleetStore } from '../src/fleet/store/open.js';
import type { FleetStore, RolloutRow } from '../src/fleet/store/store.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';

const rollout = (id: string, o: Partial<RolloutRow> = {}): RolloutRow => ({
  id, version: '2.0.0', channel: 'stable', filter: { tags: [], board: null }, stages: [{ percent: 10, waitSeconds: 0 }, { percent: 100, waitSeconds: 0 }],
  maxFailureRatio: 0.1, minSuccessRatio: 0.9, windows: [], state: 'running', stage: 0, stageStartedAt: 1, reason: null, createdAt: 1, ...o,
});
const member = (rolloutId: string, deviceId: string, stage: number) => ({ rolloutId, deviceId, stage, state: 'offered' as const, updatedAt: 1 });
const entry = (action: string, target: string) => ({ at: 1, actor: 'server', action, target, detail: null });

describe.each(FLEET_BACKENDS)('fleet store under concurrent servers (%s)', (backend) => {
  let fixture: FleetDatabase;
  let a: FleetStore;
  let b: FleetStore;
  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    [a, b] = await Promise.all([openFleetStore(fixture.db), openFleetStore(fixture.db)]).then((s) => s.map((x) => x.store));
    await Promise.all([a.migrate(), b.migrate()]);
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await fixture?.close();
  });

  it('a rollout transition asked for by many at once happens once, with one audit entry', async () => {
    await a.insertRollout(rollout('ro_t'));
    const tries = Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).transitionRollout('ro_t', { state: 'running', stage: 0 }, { stage: 1, stageStartedAt: 2 }, entry('rollout.advance', 'ro_t')));
    expect((await Promise.all(tries)).filter(Boolean)).toHaveLength(1);
    expect(await b.getRollout('ro_t')).toMatchObject({ state: 'running', stage: 1, stageStartedAt: 2 });
    // A judgement made on the old stage changes nothing.
    expect(await a.transitionRollout('ro_t', { state: 'running', stage: 0 }, { state: 'paused', reason: 'stale' }, entry('rollout.auto-pause', 'ro_t'))).toBe(false);
    expect((await a.getRollout('ro_t'))!.state).toBe('running');
    expect((await b.listAudit(100)).filter((e) => e.target === 'ro_t').map((e) => e.action)).toEqual(['rollout.advance']);
  });

  it('an offer lands only while the rollout offers that stage, and once', async () => {
    await a.insertRollout(rollout('ro_m'));
    expect(await a.addMember(member('ro_m', 'd1', 0))).toBe(true);
    expect(await b.addMember({ ...member('ro_m', 'd1', 0), state: 'failed' })).toBe(true); // already a member: unchanged
    expect(await a.getMember('ro_m', 'd1')).toMatchObject({ stage: 0, state: 'offered' });
    expect(await b.addMember(member('ro_m', 'd2', 1))).toBe(false); // stage 2 not open yet
    expect(await a.transitionRollout('ro_m', { state: 'running', stage: 0 }, { state: 'paused', reason: 'test' }, null)).toBe(true);
    expect(await b.addMember(member('ro_m', 'd3', 0))).toBe(false); // paused
    expect((await a.listMembers('ro_m')).map((m) => m.deviceId)).toEqual(['d1']);

    // Offers racing a pause: each one either landed before the pause or was refused.
    await a.insertRollout(rollout('ro_r'));
    const offers = Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).addMember(member('ro_r', `r${String(i).padStart(2, '0')}`, 0)));
    const pause = a.transitionRollout('ro_r', { state: 'running', stage: 0 }, { state: 'paused', reason: 'race' }, null);
    // What is there the moment the pause has committed is all there will ever be.
    const atPause = pause.then(async () => (await b.listMembers('ro_r')).map((m) => m.deviceId));
    const [accepted, paused, membersAtPause] = await Promise.all([Promise.all(offers), pause, atPause]);
    expect(paused).toBe(true);
    const members = (await b.listMembers('ro_r')).map((m) => m.deviceId);
    expect(members).toEqual(accepted.flatMap((ok, i) => (ok ? [`r${String(i).padStart(2, '0')}`] : [])));
    expect(members).toEqual(membersAtPause);
  });

  it('old reports are pruned, each device\'s newest kept, once whichever servers prune', async () => {
    const report = (deviceId: string, n: number, receivedAt: number) =>
      ({ id: `${deviceId}-${String(n).padStart(3, '0')}`, deviceId, state: 'committed' as const, version: '2.0', running: '2.0', slot: 'b' as const, reason: null, receivedAt });
    const sent: ReturnType<typeof report>[] = [];
    for (let i = 1; i <= 30; i++) sent.push(report('prune-1', i, i)); // all old, more than kept
    for (let i = 1; i <= 3; i++) sent.push(report('prune-2', i, i)); // old but few: all kept
    for (let i = 0; i < 25; i++) sent.push(report('prune-3', i, 100 + i)); // five old ones beyond the newest 20
    for (const r of sent) expect(await a.recordReport(r, null)).toBe(true);
    const deleted = await Promise.all([a.pruneReports(110, 20), b.pruneReports(110, 20)]);
    expect(deleted[0] + deleted[1]).toBe(15);
    const ids = async (dev: string) => (await b.listDeviceReports(dev, 100)).map((r) => r.receivedAt).sort((x, y) => x - y);
    expect(await ids('prune-1')).toEqual(Array.from({ length: 20 }, (_, i) => 11 + i));
    expect(await ids('prune-2')).toEqual([1, 2, 3]);
    expect(await ids('prune-3')).toEqual(Array.from({ length: 20 }, (_, i) => 105 + i));
    expect(await a.pruneReports(110, 20)).toBe(0);
    expect(await b.recordReport(report('prune-1', 30, 500), null)).toBe(false); // kept: still a duplicate
  });

  it('a nonce is used once, whichever server sees it', async () => {
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).consumeNonce('n-1', 5_000)));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await a.consumeNonce('n-2', 1_000)).toBe(true);
    await b.pruneNonces(2_000);
    // n-2 expired and was forgotten; n-1 (expires later) is still known.
    expect(await a.consumeNonce('n-1', 5_000)).toBe(false);
    expect(await a.consumeNonce('n-2', 1_000)).toBe(true);
  });

  it('audit numbers stay consecutive when servers append at once', async () => {
    const before = (await a.listAudit(10_000)).length;
    await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).appendAudit(entry('test.append', `t${i}`))));
    const seqs = (await b.listAudit(10_000)).map((e) => e.seq).reverse();
    expect(seqs).toEqual(Array.from({ length: before + 30 }, (_, i) => i + 1));
  });

  it('one first admin token however many servers start at once', async () => {
    const tokens = Array.from({ length: 6 }, (_, i) => ({ id: `tok_${i}`, hash: `h${i}`, name: 'bootstrap', scope: 'admin' as const, createdAt: 1 }));
    expect((await Promise.all(tokens.map((t, i) => (i % 2 ? a : b).insertFirstAdminToken(t)))).filter(Boolean)).toHaveLength(1);
    expect(await a.countAdminTokens()).toBe(1);
  });

  it('a device id registered by two servers at once keeps the first key', async () => {
    const d = (key: string) => ({ id: 'twin', publicKey: key, status: 'pending' as const, channel: 'stable', tags: [], createdAt: 1 });
    await Promise.all([a.insertDevice(d('key-a')), b.insertDevice(d('key-b'))]);
    expect(['key-a', 'key-b']).toContain((await a.getDevice('twin'))!.publicKey);
    expect((await b.listDevices({})).filter((x) => x.id === 'twin')).toHaveLength(1);
  });
});
