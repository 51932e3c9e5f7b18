/**
 * The update agent (src/ota/agent) on a simulated Raspberry Pi 4: a copy of the built gateway
 * image for rpi4 (U-Boot's boot counter in uboot.env, the builder's boot.scr run by the simulated
 * U-Boot) on a power-cuttable disk, with release 1.1 from a repository behind a local HTTP server.
 * The bootchooser is the one the image names (manifest and update.json: uboot).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testDir } from './helpers/built-images.js';
import { agentSimFixture, expectBootedVerifies, reportStates, type AgentSimFixture } from './helpers/agent-sim-fixture.js';
import { agentPass, bootedVersion, serviceReboot, type SimAgentSetup } from './helpers/ota-agent-sim.js';
import { expectFsckClean, mtoolsPaths, mtoolsRead } from './helpers/fat-tools.js';
import { fwConfig, fwPrintenv } from './helpers/uboot-env-tools.js';
import { PowerCut } from '../src/ota/sim/sim-disk.js';
import { cuttingSteps, type UpdateStepName } from '../src/ota/sim/step-driver.js';
import { ubootChain } from '../src/ota/sim/boot-chains.js';
import type { UbootAttempt } from '../src/ota/sim/uboot-model.js';

let f: AgentSimFixture;

beforeAll(async () => {
  f = await agentSimFixture('agent-rpi', 'rpi4');
  expect(f.m1.bootchooser).toBe('uboot');
}, 900_000);

afterAll(async () => {
  await f?.close();
});

const device = () => f.device({ chain: ubootChain('rpi4') });
const bootFile = (s: SimAgentSetup) => f.bootPartition(s);
const states = reportStates;

/** uboot.env as fw_printenv reads it off the boot partition. */
function cardEnv(s: SimAgentSetup): Record<string, string> {
  const file = join(testDir(), 'agent-rpi', 'uboot.env');
  writeFileSync(file, mtoolsRead(bootFile(s), 'uboot.env'));
  return fwPrintenv(fwConfig(join(testDir(), 'agent-rpi'), [file], 0x4000));
}

describe('update agent on a simulated Raspberry Pi 4 (U-Boot boot counter)', () => {
  it('installs 1.1 into slot B, U-Boot tries it, the agent commits; it stays through power cuts and counter start-overs', async () => {
    const s = await device();
    expect(await agentPass(s)).toBe('reboot');
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B A', BOOT_A_LEFT: '3', BOOT_B_LEFT: '3' });
    await serviceReboot(s);
    expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
    expect(s.dev.booted!.cmdline).toMatch(/\sedgekit\.slot=B$/);
    // The release's device tree went into slot B's folder, where boot.scr loads ${fdtfile} from.
    const dtb = 'broadcom/bcm2711-rpi-4-b.dtb';
    expect((s.dev.bootLog[s.dev.bootLog.length - 1] as UbootAttempt).console.join('\n')).not.toMatch(/File not found/);
    expect(mtoolsRead(bootFile(s), `slot-b/${dtb}`).equals(mtoolsRead(bootFile(s), `slot-a/${dtb}`))).toBe(true);
    expect(await agentPass(s)).toBe('committed');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'committed 1.1']);
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B', BOOT_A_LEFT: '0', BOOT_B_LEFT: '3' });
    expect(mtoolsPaths(bootFile(s))).toEqual(expect.arrayContaining(['slot-b/vmlinuz', 'slot-b/initrd.img', 'slot-b/cmdline.txt']));
    expectFsckClean(bootFile(s));
    // Committed: more boots than the counter holds (it starts over when it runs out), and a power cut.
    await s.dev.cutAndPowerOn();
    for (let i = 0; i < 8; i++) {
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      await expectBootedVerifies(s);
      await serviceReboot(s);
    }
    expect(await agentPass(s)).toBe('idle');
    await s.dev.close();
  }, 600_000);

  it('a committed slot keeps its tries: each agent pass gives back the one its boot spent, so U-Boot never starts the counters over', async () => {
    const s = await device();
    expect(await agentPass(s)).toBe('reboot');
    await serviceReboot(s);
    expect(await agentPass(s)).toBe('committed');
    const first = s.dev.bootLog.length;
    for (let i = 0; i < 8; i++) {
      await serviceReboot(s);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B', BOOT_B_LEFT: '2' });
      expect(await agentPass(s)).toBe('idle');
      expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'B', BOOT_A_LEFT: '0', BOOT_B_LEFT: '3' });
    }
    // One power-on per boot: no start-over and its extra reset.
    expect(s.dev.bootLog.length - first).toBe(8);
    expect(s.dev.bootLog.slice(first).flatMap((a) => (a as UbootAttempt).console).join('\n')).not.toMatch(/no slot has tries left/);
    expectFsckClean(bootFile(s));
    await s.dev.close();
  }, 600_000);

  it('a release that is never healthy: failed on each of its 3 tries, rolled back to slot A, which then stays', async () => {
    const s = await device();
    const healthy = (v: string) => v !== '1.1';
    expect(await agentPass(s, { healthy })).toBe('reboot');
    for (let i = 0; i < 3; i++) {
      await serviceReboot(s);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(await agentPass(s, { healthy })).toBe('reboot');
    }
    await serviceReboot(s);
    expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
    expect(await agentPass(s, { healthy })).toBe('rolled-back');
    expect(states(s)).toEqual(['downloading 1.1', 'installing 1.1', 'rebooting 1.1', 'failed 1.1', 'failed 1.1', 'failed 1.1', 'rolled-back 1.1']);
    // The agent kept the slot U-Boot fell back to: B is out of BOOT_ORDER, so A's counter running
    // out starts A over instead of trying B again.
    expect(cardEnv(s)).toMatchObject({ BOOT_ORDER: 'A', BOOT_B_LEFT: '0' });
    for (let i = 0; i < 8; i++) {
      await serviceReboot(s);
      expect(bootedVersion(s)).toEqual({ slot: 'a', version: '1.0' });
      expect(await agentPass(s, { healthy })).toBe('idle');
    }
    await expectBootedVerifies(s);
    await s.dev.close();
  }, 600_000);

  const cutPoints: UpdateStepName[] = ['invalidate', 'write-slot', 'try-once', 'repair-boot', 'health', 'mark-good'];
  for (const step of cutPoints) {
    it(`power cut right before "${step}": the agent picks up after the power-on and commits 1.1`, async () => {
      const s = await device();
      const late = ['repair-boot', 'health', 'mark-good'].includes(step);
      let armed = !late;
      const steps = cuttingSteps(s.dev.disk, (n) => armed && n === step);
      let committed = false;
      for (let i = 0; i < 12 && !committed; i++) {
        try {
          const out = await agentPass(s, { steps });
          if (out === 'reboot') {
            await serviceReboot(s);
            armed = true;
          }
          committed = out === 'committed';
        } catch (err) {
          if (!(err instanceof PowerCut)) throw err;
          await s.dev.cutAndPowerOn();
        }
      }
      expect(steps.fired).toBe(true);
      expect(committed).toBe(true);
      expect(bootedVersion(s)).toEqual({ slot: 'b', version: '1.1' });
      expect(s.reports.filter((r) => r.state === 'rolled-back')).toEqual([]);
      await expectBootedVerifies(s);
      expectFsckClean(bootFile(s));
      await s.dev.close();
    }, 600_000);
  }
});
