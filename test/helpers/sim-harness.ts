/**
 * Runs an update on a simulated device under a fault schedule, the way a device lives through it:
 * the updater runs after every boot; a power cut anywhere (updater, firmware) is followed by a
 * power-on; after a rollback the update is installed again a bounded number of times. After every
 * boot it checks, independently of the code under test, that the running slot's payload verifies
 * (src/fs/verity.ts on the image file) and is one of the releases the test knows.
 */
import { expect } from 'vitest';
import { verifyVerity } from '../../src/fs/verity.js';
import { PowerCut } from '../../src/ota/sim/sim-disk.js';
import type { Booted, SimDevice } from '../../src/ota/sim/device.js';
import { scriptedUpdate, type ReleaseUnderTest, type UpdateReport } from '../../src/ota/sim/scripted-updater.js';
import { cuttingSteps, directSteps, type UpdateStepName } from '../../src/ota/sim/step-driver.js';

export interface RunOptions {
  /** Root hashes a booted slot may have: the running release and the one being installed. */
  knownRoots: Set<string>;
  /** Absolute disk-operation numbers at which the power goes. */
  cutAtOps?: number[];
  /** Cut the power right before this step, once. */
  cutBeforeStep?: UpdateStepName;
  health?: (b: Booted) => Promise<boolean>;
  /** Rollbacks after which the update is given up (reported failed); default 3. */
  maxRollbacks?: number;
  maxRounds?: number;
  /** Runs in the booted system before the updater (e.g. damage the disk). */
  afterBoot?: (dev: SimDevice, round: number) => Promise<void>;
  /** Runs when the updater asks for a reboot, before it happens. */
  beforeReboot?: (dev: SimDevice) => Promise<void>;
}

export interface RunResult {
  outcome: 'committed' | 'failed';
  reason?: string;
  reports: UpdateReport[];
  boots: Booted[];
  rollbacks: number;
}

export async function runUpdate(dev: SimDevice, release: ReleaseUnderTest, opts: RunOptions): Promise<RunResult> {
  dev.disk.scheduleCuts(opts.cutAtOps ?? []);
  const reports: UpdateReport[] = [];
  const boots: Booted[] = [];
  let rollbacks = 0;
  const steps = opts.cutBeforeStep ? cuttingSteps(dev.disk, (n) => n === opts.cutBeforeStep) : undefined;
  let booted = dev.booted ?? (await dev.powerOn());
  for (let round = 0; round < (opts.maxRounds ?? 60); round++) {
    await checkBooted(dev, booted, opts.knownRoots);
    boots.push(booted);
    try {
      await opts.afterBoot?.(dev, round);
      const host = await dev.host(opts.health);
      const before = reports.length;
      const out = await scriptedUpdate(host, release, (r) => reports.push(r), { steps, reinstallAfterRollback: rollbacks + 1 < (opts.maxRollbacks ?? 3) });
      if (reports.slice(before).some((r) => r.state === 'rolled-back')) rollbacks++;
      if (out === 'committed') return { outcome: 'committed', reports, boots, rollbacks };
      if (out === 'failed') return { outcome: 'failed', reason: reports[reports.length - 1].reason, reports, boots, rollbacks };
      if (out === 'rolled-back') return { outcome: 'failed', reason: `gave up after ${rollbacks} rollbacks`, reports, boots, rollbacks };
      await opts.beforeReboot?.(dev);
      // What the agent's service does before it reboots: the boot chain's last word (tryboot's flag).
      const argument = await (steps ?? directSteps).step('prepare-reboot', () => host.chooser.prepareReboot());
      booted = await dev.reboot(argument);
    } catch (err) {
      if (!(err instanceof PowerCut)) throw err;
      booted = await dev.cutAndPowerOn();
    }
  }
  throw new Error(`update neither committed nor failed after ${opts.maxRounds ?? 60} rounds: ${JSON.stringify(reports.slice(-5))}`);
}

/** The running slot's payload verifies on disk and is a release the test knows. */
export async function checkBooted(dev: SimDevice, booted: Booted, knownRoots: Set<string>): Promise<void> {
  const m = /edgekit\.verity=([0-9a-f]+):([0-9a-f]*):(\d+):(\d+)/.exec(booted.cmdline);
  expect(m, booted.cmdline).toBeTruthy();
  expect(knownRoots.has(m![1]), `booted root ${m![1]} is not a known release`).toBe(true);
  expect(dev.disk.unsyncedWrites).toBe(0);
  const check = await verifyVerity(dev.disk.path, {
    offset: dev.layout.slots[booted.slot].start,
    rootHash: m![1],
    salt: m![2],
    dataBlocks: Number(m![3]),
    hashOffset: Number(m![4]) * 4096,
  });
  expect(check, `slot ${booted.slot} booted with a payload that does not verify`).toEqual({ ok: true });
}
