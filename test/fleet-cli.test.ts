/**
 * `edgekit fleet` through the built CLI against a real `edgekit serve` on 127.0.0.1, with devices
 * speaking the protocol through the agent's client: inventory, channels, releases, rollouts with
 * maintenance windows, a device's history, --json, the token from a flag, a file or the
 * environment, and one-line errors carrying the server's reason (401, 403, 404, unreachable).
 * Against each store (SQLite, and a real PostgreSQL server started for the test): the CLI is a thin
 * client, so this is also the admin API's operators' endpoints on both.
 */
import { createServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { edgekit } from './helpers/built-images.js';
import { FLEET_BACKENDS, fleetDatabase, type FleetDatabase } from './helpers/fleet-db.js';
import { provisioningToken, simDevices, type SimDevice } from './helpers/fleet-devices.js';
import { adminToken, api, startServerProcess, type ServerProcess } from './helpers/fleet-server.js';

const hh = (h: number) => `${String(((h % 24) + 24) % 24).padStart(2, '0')}:00`;

describe.each(FLEET_BACKENDS)('edgekit fleet (%s)', (backend) => {
  let fixture: FleetDatabase;
  let server: ServerProcess;
  let admin: string;
  let reader: string;
  let devices: SimDevice[];
  let walkIn: SimDevice;

  beforeAll(async () => {
    fixture = await fleetDatabase(backend);
    server = await startServerProcess(fixture.db, ['--admin-token-file', fixture.adminTokenFile]);
    admin = await adminToken(fixture.db, fixture.adminTokenFile);
    reader = (await api(server.url, admin, 'POST', '/v1/admin/tokens', { name: 'viewer', scope: 'read' })).body.token;
    const prov = await provisioningToken(server.url, admin, { tags: ['field'] });
    devices = await simDevices(server.url, ['dev-0', 'dev-1', 'dev-2', 'dev-3'], { provisioningToken: prov });
    for (const d of devices) await d.checkIn();
    [walkIn] = await simDevices(server.url, ['walk-in'], {}); // no provisioning token: waits for an operator
  });
  afterAll(async () => {
    await server?.stop();
    await fixture?.close();
  });

  /** The CLI with the server and token in the environment, as an operator's shell would have them. */
  const fleet = (args: string[], token: string | null = admin) =>
    edgekit(['fleet', ...args], { env: { EDGEKIT_FLEET_SERVER: server.url, EDGEKIT_FLEET_TOKEN: token ?? '' } });
  const json = async (args: string[], token: string | null = admin) => {
    const r = await fleet([...args, '--json'], token);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout);
  };

  it('lists, shows, accepts, tags and revokes devices', async () => {
    const all = await json(['devices', 'list']);
    expect(all.map((d: { id: string; status: string }) => `${d.id}:${d.status}`)).toEqual(['dev-0:accepted', 'dev-1:accepted', 'dev-2:accepted', 'dev-3:accepted', 'walk-in:pending']);
    const text = await fleet(['devices', 'list', '--status', 'pending']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^DEVICE\s+STATUS\s+CHANNEL/);
    expect(text.stdout.trim().split('\n')).toHaveLength(2);
    expect(text.stdout).toMatch(/^walk-in\s+pending\s+stable/m);

    expect((await fleet(['devices', 'accept', 'walk-in'])).stdout).toBe('accepted walk-in\n');
    expect((await json(['devices', 'show', 'walk-in'])).status).toBe('accepted');

    expect((await json(['devices', 'tag', 'dev-1', 'eu', 'rack-2'])).tags).toEqual(['eu', 'field', 'rack-2']);
    expect((await json(['devices', 'tag', 'dev-1', 'eu', '--remove'])).tags).toEqual(['field', 'rack-2']);
    expect((await fleet(['devices', 'tag', 'dev-2', '--replace'])).stdout).toBe('dev-2: tags (none)\n');
    expect((await fleet(['devices', 'tag', 'dev-2'])).stderr).toMatch(/^edgekit: devices tag: name the tags to add/);
    expect((await fleet(['devices', 'tag', 'dev-2', 'bad tag'])).stderr).toMatch(/^edgekit: PUT \/v1\/admin\/devices\/dev-2\/tags: 400 Bad Request: tags\.0: tags: 1-64 letters/);
    expect((await fleet(['devices', 'tag', 'dev-1', 'field', '--replace'])).stdout).toBe('dev-1: tags field\n');
    expect((await fleet(['devices', 'tag', 'dev-2', 'field'])).stdout).toBe('dev-2: tags field\n');

    expect((await fleet(['devices', 'revoke', 'walk-in'])).stdout).toMatch(/^revoked walk-in \(status rejected/);
    // The revoked device's key no longer authenticates.
    await expect(walkIn.client.authenticate()).rejects.toMatchObject({ status: 403, message: expect.stringMatching(/walk-in was rejected by an operator/) });
  });

  it('reads the token from --token and --token-file too, and says what is wrong in one line', async () => {
    const viaFlag = await edgekit(['fleet', 'channels', 'list', '--server', server.url, '--token', reader, '--json']);
    expect(viaFlag.code).toBe(0);
    const viaFile = await edgekit(['fleet', 'channels', 'list', '--server', server.url, '--token-file', fixture.adminTokenFile]);
    expect(viaFile.code).toBe(0);
    expect(viaFile.stdout).toMatch(/^stable\s+\d+/m);

    const cases: Array<[string[], string | null, RegExp]> = [
      [['devices', 'list'], null, /^edgekit: no admin token: give --token/],
      [['devices', 'list'], 'adm_wrong', /^edgekit: GET \/v1\/admin\/devices: 401 Unauthorized: invalid admin token \(give an admin token/],
      [['devices', 'accept', 'dev-0'], reader, /^edgekit: POST \/v1\/admin\/devices\/dev-0\/accept: 403 Forbidden: token tok_\w+ has scope read; this needs operator$/],
      [['devices', 'show', 'nope'], reader, /^edgekit: GET \/v1\/admin\/devices\/nope: 404 Not Found: no device nope$/],
      [['rollouts', 'pause', 'ro_none'], admin, /^edgekit: POST \/v1\/admin\/rollouts\/ro_none\/pause: 404 Not Found: no rollout ro_none$/],
      [['rollouts', 'create', '--version', '2.0', '--window', '25:00-01:00'], admin, /^edgekit: --window "25:00-01:00": start "25:00" is not a UTC time/],
      [['rollouts', 'create', '--version', '2.0', '--window', '01:00-02:00 Mars/Olympus'], admin, /^edgekit: --window "01:00-02:00 Mars\/Olympus": time zone "Mars\/Olympus" is not an IANA zone name/],
      [['rollouts', 'create', '--version', '2.0', '--stages', '10,5'], admin, /^edgekit: POST \/v1\/admin\/rollouts: 400 Bad Request: stages: stage 2: percent 5 does not grow from 10$/],
      [['rollouts', 'create', '--version', '2.0', '--max-failure-ratio', '5'], admin, /^edgekit: --max-failure-ratio: a ratio from 0 to 1/],
    ];
    for (const [args, token, want] of cases) {
      const r = await fleet(args, token);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.trimEnd().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trimEnd()).toMatch(want);
    }
    // A port nothing listens on: one just freed.
    const probe = createServer();
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const port = (probe.address() as AddressInfo).port;
    await new Promise((resolve) => probe.close(resolve));
    const down = await edgekit(['fleet', 'devices', 'list', '--server', `http://127.0.0.1:${port}`, '--token', admin]);
    expect(down.code).toBe(1);
    expect(down.stderr).toBe(`edgekit: http://127.0.0.1:${port}: cannot reach the fleet server (ECONNREFUSED)\n`);
    const notUrl = await edgekit(['fleet', 'devices', 'list', '--server', 'fleet.example', '--token', admin]);
    expect(notUrl.stderr).toBe('edgekit: fleet server "fleet.example": not a URL (e.g. http://127.0.0.1:8480)\n');
  });

  it('manages channels and releases', async () => {
    expect((await fleet(['channels', 'create', 'beta'])).stdout).toBe('created channel beta\n');
    expect((await fleet(['channels', 'set', 'beta', 'dev-3'])).stdout).toBe('dev-3 now follows channel beta\n');
    expect((await fleet(['releases', 'add', '2.0', '--channel', 'stable'])).stdout).toBe('added release 2.0 to channel stable\n');
    expect((await fleet(['releases', 'add', '2.0', '--channel', 'beta'])).code).toBe(0);
    const channels = await json(['channels', 'list'], reader);
    expect(channels).toEqual([
      expect.objectContaining({ name: 'beta', devices: 1, releases: ['2.0'] }),
      expect.objectContaining({ name: 'stable', devices: 4, releases: ['2.0'] }),
    ]);
    expect((await json(['releases', 'list', '--channel', 'beta'], reader)).map((r: { version: string }) => r.version)).toEqual(['2.0']);
    const dup = await fleet(['releases', 'add', '2.0', '--channel', 'beta']);
    expect(dup.stderr).toMatch(/409 Conflict: release 2\.0 is already in channel beta/);
  });

  it('creates a rollout, shows it stage by stage, pauses and resumes it', async () => {
    const now = new Date().getUTCHours();
    const created = await json(['rollouts', 'create', '--version', '2.0', '--stages', '50,100', '--tag', 'field', '--max-failure-ratio', '0.4', '--window', `${hh(now - 1)}-${hh(now + 2)}`]);
    expect(created).toMatchObject({ state: 'running', stage: 0, filter: { tags: ['field'], board: null }, maxFailureRatio: 0.4, stages: [{ percent: 50, waitSeconds: 0 }, { percent: 100, waitSeconds: 0 }] });
    const id = created.id as string;

    // dev-3 moved to beta, walk-in has no tag: dev-0..2 take part.
    const field = devices.filter((d) => d.id !== 'dev-3');

    // Pausing needs an operator token; paused, nobody is offered the release.
    const refused = await fleet(['rollouts', 'pause', id], reader);
    expect(refused.stderr).toMatch(/403 Forbidden: token tok_\w+ has scope read; this needs operator/);
    expect((await fleet(['rollouts', 'pause', id])).stdout).toBe(`rollout ${id} is paused (paused by bootstrap)\n`);
    expect((await api(server.url, reader, 'GET', `/v1/admin/rollouts/${id}`)).body.state).toBe('paused');
    for (const d of field) expect((await d.checkIn()).release).toBeNull();
    expect((await json(['rollouts', 'resume', id])).state).toBe('running');

    // Those in stage 1 update.
    const round = async () => {
      const offered: SimDevice[] = [];
      for (const d of field) if (d.version !== '2.0' && (await d.checkIn()).release) offered.push(d);
      for (const d of offered) await d.update('2.0', true);
      return offered;
    };
    const first = await round();
    // (When hashing put nobody in stage 1, the server's tick may already have opened stage 2.)
    const status1 = await json(['rollouts', 'status', id], reader);
    const sum = (stages: Array<Record<string, number>>, k: string) => stages.reduce((n, s) => n + s[k], 0);
    expect(status1.progress.stages[0]).toMatchObject({ stage: 1, open: true, failed: 0 });
    expect([sum(status1.progress.stages, 'offered'), sum(status1.progress.stages, 'succeeded')]).toEqual([first.length, first.length]);
    expect(sum(status1.progress.stages, 'devices')).toBe(field.length);

    // Stage 1 succeeded: stage 2 opens (at once, or on the server's next tick when stage 1 was empty).
    for (let i = 0; i < 50 && (await json(['rollouts', 'status', id], reader)).stage !== 1; i++) await new Promise((r) => setTimeout(r, 200));
    const second = await round();
    expect(first.length + second.length).toBe(field.length);
    expect(field.every((d) => d.version === '2.0')).toBe(true);

    const done = await json(['rollouts', 'status', id], reader);
    expect(done).toMatchObject({ state: 'completed', counts: { offered: 3, succeeded: 3, failed: 0 } });
    const [s1, s2] = done.progress.stages;
    expect([s1.offered + s2.offered, s1.succeeded + s2.succeeded, s1.devices + s2.devices]).toEqual([3, 3, 3]);
    const human = await fleet(['rollouts', 'status', id], reader);
    expect(human.stdout).toMatch(new RegExp(`^rollout ${id}: 2\\.0 to channel stable \\(tags field\\)$`, 'm'));
    expect(human.stdout).toMatch(/^\s+state\s+completed$/m);
    expect(human.stdout).toMatch(/^\s+windows\s+\d\d:00-\d\d:00 UTC$/m);
    expect(human.stdout).toMatch(/^STAGE\s+PERCENT\s+WAIT\s+OPEN\s+DEVICES/m);
    expect(human.stdout).toMatch(new RegExp(`^1\\s+50%\\s+0s\\s+yes\\s+${s1.devices}\\s+${s1.offered}\\s+0\\s+${s1.succeeded}\\s+0\\s+0\\.0%$`, 'm'));
    expect(human.stdout).toMatch(new RegExp(`^2\\s+100%\\s+0s\\s+yes\\s+${s2.devices}\\s+${s2.offered}\\s+0\\s+${s2.succeeded}\\s+0\\s+0\\.0%$`, 'm'));
    expect((await fleet(['rollouts', 'list'], reader)).stdout).toMatch(new RegExp(`^${id}\\s+2\\.0\\s+stable\\s+completed\\s+2/2\\s+3\\s+0\\s+3\\s+0$`, 'm'));
    expect((await fleet(['rollouts', 'pause', id])).stderr).toMatch(/409 Conflict: rollout ro_\w+ is completed: cannot pause$/m);

    // A device's history: the reports of its update, newest first.
    const shown = await json(['devices', 'show', 'dev-0'], reader);
    expect(shown).toMatchObject({ version: '2.0', previousVersion: '1.0', slot: 'b' });
    expect(shown.reports.map((r: { state: string }) => r.state)).toEqual(['committed', 'rebooting', 'installing', 'downloading']);
    expect((await fleet(['devices', 'show', 'dev-0'], reader)).stdout).toMatch(/^\S+\s+committed\s+2\.0\s+2\.0\s+b\s*$/m);
  });

  it('offers a rollout with a maintenance window only inside it', async () => {
    const beta = devices.find((d) => d.id === 'dev-3')!;
    const now = new Date().getUTCHours();
    // A window that starts two hours from now: the device is not offered the release.
    const later = await json(['rollouts', 'create', '--version', '2.0', '--channel', 'beta', '--window', `${hh(now + 2)}-${hh(now + 4)}`]);
    expect(later.windows).toEqual([{ start: hh(now + 2), end: hh(now + 4), days: [] }]);
    expect(await beta.checkIn()).toEqual({ release: null });
    expect(await json(['rollouts', 'status', later.id])).toMatchObject({ counts: { offered: 0 } });
    expect((await fleet(['rollouts', 'abort', later.id])).stdout).toBe(`rollout ${later.id} is aborted (aborted by bootstrap)\n`);
    // Today's weekday around now: offered.
    const day = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'][new Date(Date.now() - 3600_000).getUTCDay()];
    const open = await json(['rollouts', 'create', '--version', '2.0', '--channel', 'beta', '--window', `${day} ${hh(now - 1)}-${hh(now + 2)}`]);
    expect((await beta.checkIn()).release).toEqual({ version: '2.0', channel: 'beta', rolloutId: open.id });
  });

  it('takes a release off a channel only while no live rollout offers it', async () => {
    const live = await fleet(['releases', 'remove', '2.0', '--channel', 'beta']);
    expect(live.code).toBe(1);
    expect(live.stderr).toMatch(/409 Conflict: rollout ro_\w+ \(running\) offers 2\.0 in channel beta: abort it first/);
    const open = (await json(['rollouts', 'list'])).find((r: { channel: string; state: string }) => r.channel === 'beta' && r.state === 'running');
    expect((await fleet(['rollouts', 'abort', open.id])).code).toBe(0);
    expect((await fleet(['releases', 'remove', '2.0', '--channel', 'beta'], reader)).stderr).toMatch(/403/);
    expect((await fleet(['releases', 'remove', '2.0', '--channel', 'beta'])).stdout).toBe('removed release 2.0 from channel beta\n');
    expect(await json(['releases', 'list', '--channel', 'beta'], reader)).toEqual([]);
    expect((await fleet(['releases', 'remove', '2.0', '--channel', 'beta'])).stderr).toMatch(/404 Not Found: no release 2\.0 in channel beta/);
    expect((await json(['releases', 'list', '--channel', 'stable'], reader)).map((r: { version: string }) => r.version)).toEqual(['2.0']);
  });
});
