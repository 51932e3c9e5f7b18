/**
 * The update agent's logic, run for real against O3's simulated device (a copy of a built gateway
 * image on a power-cuttable disk) and O1's repository (two real gateway releases, published with
 * the CLI) behind a local HTTP server: a full update, a dropped connection resumed with a byte
 * range, power cuts at named points and in the middle of the download, a rollback, the data
 * budget, and an unreachable server. Slots are checked with dm-verity (src/fs/verity.ts on the
 * image file) and the boot partition with fsck.vfat and mtools.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { AgentRepo } from './helpers/ota-agent-images.js';
import type { AgentServer } from './helpers/ota-agent-server.js';
import { agentSimFixture, expectBootedVerifies, reportStates, type AgentSimFixture } from './helpers/agent-sim-fixture.js';
import { agentPass, bootedVersion, type SimAgentSetup } from './helpers/ota-agent-sim.js';
import { expectFsckClean, mtoolsPaths } from './helpers/fat-tools.js';
import { PowerCut } from '../src/ota/sim/sim-disk.js';
import { cuttingSteps, type UpdateStepName } from '../src/ota/sim/step-driver.js';
import type { TargetSource } from '../src/ota/agent/target-source.js';
import { StateStore } from '../src/ota/agent/state.js';
import type { AgentConfigInput } from '../src/ota/agent/config.js';
import { freePort } from './helpers/qemu-image.js';

let f: AgentSimFixture;
let repo: AgentRepo;
let server: AgentServer;

beforeAll(async () => {
  f = await agentSimFixture('agent-sim');
  ({ repo, server } = f);
}, 900_000);

afterAll(async () => {
  await f?.close();
});

const device = (o: { server?: string; config?: Partial<AgentConfigInput> } = {}) => f.device(o);
const espFile = (s: SimAgentSetup) => f.bootPartition(s);
const payloadRequests = () => server.requests.filter((r) => r.includes('system.squashfs'));
const states = reportStates;

/** Runs the agent after every boot, as the service does, until it commits or `rounds` run out. */
async function untilCommitted(s: SimAgentSetup, opts: Parameters<typeof agentPass>[1] = {}, rounds = 8): Promise<void> {
  for (let i = 0; i < rounds; i++) {
    let out;
    try {
      out = await agentPass(s, opts);
    } catch (err) {
      if (!(err instanceof PowerCut)) throw err;
      await s.dev.cutAndPowerOn();
      continue;
    }
    if (out === 'committed') return;
    if (out === 'reboot') await s.dev.reboot();
    else if (out !== 'idle') throw new Error(`agent pass: ${out}: ${s.log.join('\n')}`);
  }
  throw new Error(`not committed after ${rounds} rounds:\n${s.log.join('\n')}`);
}

describe('update agent on the simulated device', () => {
  it('installs 1.1 into slot B from the server, reboots into it, commits; the cost is reported first', async () => {
    const s = await device();
    const before = payloadRequests().length;
    expect(await agentPass(s)).toBe('reboot');
    const dl = s.reports.find((r) => r.state === 'downloading')!;
    // The root payload and the slot's boot files, as the repository folder holds them.
    const dir = join(repo.repo, 'targets', 'gateway', 'qemu-x86_64', '1.1');
    const files = readdirSync(dir).filter((f) => /\.(system\.squashfs|vmlinuz|initrd\.img)$/.test(f));
    expect(files.length).toBe(3);
    expect(dl.bytes).toBe(files.reduce((n, f) => n + statSync(join(dir, f)).size, 0));
    expect(dl.method).toBe('full');
    await s.dev.reboot();
    expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
    expect(await agentPass(s)).toBe('committed');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'committed 1.1']);
    await expectBootedVerifies(s);
    expect(mtoolsPaths(espFile(s))).toEqual(expect.arrayContaining(['loader/entries/edgekit-1-a.conf', 'loader/entries/edgekit-2-b.conf', 'slot-b/vmlinuz', 'slot-b/initrd.img']));
    expectFsckClean(espFile(s));
    // Committed and blessed: power cuts and reboots keep it on 1.1, and the agent stays idle.
    await s.dev.cutAndPowerOn();
    expect(bootedVersion(s).version).toBe('1.1');
    expect(await agentPass(s)).toBe('idle');
    expect(payloadRequests().length - before).toBe(1);
    await s.dev.close();
  }, 300_000);

  it('resumes a download the server cut off, from the byte where it stopped (HTTP range)', async () => {
    const s = await device();
    const before = payloadRequests().length;
    server.dropAfter('system.squashfs', 3 << 20, 2);
    expect(await agentPass(s)).toBe('reboot');
    const reqs = payloadRequests().slice(before);
    expect(reqs.length).toBe(3);
    expect(reqs[0]).not.toMatch(/bytes=/);
    const resumedAt = reqs.slice(1).map((r) => Number(/bytes=(\d+)-/.exec(r)![1]));
    expect(resumedAt[0]).toBe(3 << 20);
    expect(resumedAt[1]).toBe(6 << 20);
    expect(s.log.join('\n')).toMatch(/connection closed after byte|ECONNRESET|aborted|premature/i);
    await s.dev.reboot();
    expect(await agentPass(s)).toBe('committed');
    await expectBootedVerifies(s);
    await s.dev.close();
  }, 300_000);

  it('drops a connection that stalls and resumes the download with a range', async () => {
    const s = await device({ config: { download: { attempts: 4, maxBackoff: 0.05, stallTimeout: 0.5 } } });
    const before = payloadRequests().length;
    server.stallAfter('system.squashfs', 2 << 20);
    expect(await agentPass(s)).toBe('reboot');
    const reqs = payloadRequests().slice(before);
    expect(reqs.length).toBe(2);
    expect(reqs[1]).toMatch(new RegExp(`bytes=${2 << 20}-$`));
    expect(s.log.join('\n')).toMatch(/no data for 0\.5 s; resuming \(attempt 2\)/);
    await s.dev.reboot();
    expect(await agentPass(s)).toBe('committed');
    await expectBootedVerifies(s);
    await s.dev.close();
  }, 300_000);

  it('resumes after a power cut in the middle of the download, from what was flushed to the slot', async () => {
    const s = await device();
    const before = payloadRequests().length;
    // The power goes after 6 MiB of the payload (8 MiB) came in.
    let seen = 0;
    const cutting = (base: TargetSource): TargetSource => ({
      where: base.where,
      async openFrom(t, start, signal) {
        const stream = await base.openFrom(t, start, signal);
        if (!t.path.endsWith('system.squashfs')) return stream;
        return Readable.from(
          (async function* () {
            for await (const c of stream as AsyncIterable<Buffer>) {
              seen += c.length;
              if (seen > 6 << 20) throw new PowerCut(0);
              yield c;
            }
          })(),
          { objectMode: false },
        );
      },
    });
    await expect(agentPass(s, { source: cutting })).rejects.toBeInstanceOf(PowerCut);
    await s.dev.cutAndPowerOn();
    expect(bootedVersion(s).version).toBe('1.0');
    const flushed = (await new StateStore(s.config('1.0').stateDir).load()).attempt!.flushed;
    expect(flushed).toBeGreaterThanOrEqual(4 << 20);
    await untilCommitted(s);
    const reqs = payloadRequests().slice(before);
    expect(reqs[1]).toBe(reqs[1].replace(/bytes=\d+-/, `bytes=${flushed}-`));
    expect(reqs[1]).toMatch(/bytes=\d+-/);
    expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
    await expectBootedVerifies(s);
    expectFsckClean(espFile(s));
    await s.dev.close();
  }, 300_000);

  const cutPoints: UpdateStepName[] = ['invalidate', 'write-slot', 'try-once', 'repair-boot', 'health', 'mark-good'];
  for (const step of cutPoints) {
    it(`power cut right before "${step}": the agent picks up after the power-on and commits 1.1`, async () => {
      const s = await device();
      // repair-boot, health and mark-good come after the reboot into B: cut there on that boot.
      const late = ['repair-boot', 'health', 'mark-good'].includes(step);
      let armed = !late;
      const steps = cuttingSteps(s.dev.disk, (n) => armed && n === step);
      for (let i = 0; i < 10 && !steps.fired; i++) {
        try {
          const out = await agentPass(s, { steps });
          if (out === 'reboot') {
            await s.dev.reboot();
            armed = true;
          }
          if (out === 'committed') break;
        } catch (err) {
          if (!(err instanceof PowerCut)) throw err;
          await s.dev.cutAndPowerOn();
        }
      }
      expect(steps.fired).toBe(true);
      await untilCommitted(s);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      await expectBootedVerifies(s);
      expectFsckClean(espFile(s));
      expect(s.reports.filter((r) => r.state === 'committed').length).toBe(1);
      await s.dev.close();
    }, 300_000);
  }

  it('a release that is never healthy: failed on each of its 3 tries, then rolled back to slot A, and not tried again', async () => {
    const s = await device();
    const healthy = (v: string) => v !== '1.1';
    expect(await agentPass(s, { healthy })).toBe('reboot');
    for (let i = 0; i < 3; i++) {
      await s.dev.reboot();
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(await agentPass(s, { healthy })).toBe('reboot');
    }
    await s.dev.reboot();
    expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
    expect(await agentPass(s, { healthy })).toBe('rolled-back');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'failed 1.1', 'failed 1.1', 'failed 1.1', 'rolled-back 1.1']);
    expect(s.reports.at(-1)!.reason).toMatch(/3 unhealthy boots/);
    expect(await agentPass(s, { healthy })).toBe('idle');
    expect(s.log.at(-1)).toMatch(/1\.1 rolled back on this device before/);
    expect(mtoolsPaths(espFile(s))).toContain('loader/entries/edgekit-2-b+0-3.conf');
    await expectBootedVerifies(s);
    await s.dev.close();
  }, 300_000);

  it('refuses an update that does not fit the data budget, before touching slot B', async () => {
    const s = await device({ config: { dataBudget: 4 << 20 } });
    const before = payloadRequests().length;
    expect(await agentPass(s)).toBe('failed');
    const r = s.reports.find((x) => x.state === 'failed')!;
    expect(r.reason).toMatch(/^data budget: the update needs \d+ more bytes, 0 already spent of the 4194304 allowed$/);
    expect(r.bytes).toBeGreaterThan(4 << 20);
    expect(payloadRequests().length).toBe(before);
    const chooser = await s.dev.chooser();
    expect((await chooser.state()).find((x) => x.slot === 'b')!.bootable).toBe(false);
    await s.dev.close();
  }, 300_000);

  it('reports a failure and changes nothing when the server cannot be reached', async () => {
    const port = await freePort();
    const s = await device({ server: `http://127.0.0.1:${port}` });
    expect(await agentPass(s)).toBe('failed');
    const r = s.reports.find((x) => x.state === 'failed')!;
    expect(r.reason).toMatch(new RegExp(`127\\.0\\.0\\.1:${port}.*(ECONNREFUSED|refused|fetch)`, 'i'));
    expect(await new StateStore(s.config('1.0').stateDir).load()).toEqual({ rolledBack: [], slots: {} });
    expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
    await s.dev.close();
  }, 300_000);
});
