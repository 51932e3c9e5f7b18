/**
 * A minimal updater for the simulator's tests (the real agent comes later and uses the same
 * pieces): it runs after every boot and decides from the disk alone what is left to do, so a power
 * cut anywhere only means it starts over from what is on the disk.
 *
 *   running the release, not yet blessed  -> health check, markGood, 'committed'
 *   running the release, blessed          -> 'committed'
 *   the other slot was tried, fell back   -> 'rolled-back' (reinstalled if asked to)
 *   the other slot waits for its trial    -> 'reboot'
 *   otherwise                             -> invalidate the other slot, writeSlot (unless it already
 *                                            holds the payload), tryOnce, 'reboot'
 */
import type { VerityParams } from '../../fs/verity.js';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { otherSlot, type Bootchooser, type Slot, type SlotBootFiles } from '../slots/bootchooser.js';
import type { BlockDevice } from '../slots/block-device.js';
import { sha256OfDevice, writeSlot } from '../slots/write-slot.js';
import { directSteps, type StepDriver } from './step-driver.js';

export interface ReleaseUnderTest {
  version: string;
  /** The slot payload (root filesystem + hash tree), as the download would stream it. */
  payload: () => AsyncIterable<Buffer>;
  sha256: string;
  size: number;
  verity: VerityParams;
  boot: SlotBootFiles;
}

export type UpdateState = 'downloading' | 'installing' | 'rebooting' | 'committed' | 'rolled-back' | 'failed';

export interface UpdateReport {
  state: UpdateState;
  version: string;
  reason?: string;
}

export interface UpdaterHost {
  chooser: Bootchooser;
  boot: FatVolume;
  slotDevice(slot: Slot): BlockDevice;
  health(): Promise<boolean>;
}

export type UpdaterOutcome = 'reboot' | 'committed' | 'rolled-back' | 'failed';

export async function scriptedUpdate(
  host: UpdaterHost,
  release: ReleaseUnderTest,
  report: (r: UpdateReport) => void,
  opts: { steps?: StepDriver; reinstallAfterRollback?: boolean } = {},
): Promise<UpdaterOutcome> {
  const steps = opts.steps ?? directSteps;
  const say = (state: UpdateState, reason?: string) => report({ state, version: release.version, ...(reason ? { reason } : {}) });
  try {
    // What a cut left on the boot partition (lost clusters, FAT copies) is cleaned before new writes.
    await steps.step('repair-boot', () => host.boot.repair());
    const { chooser } = host;
    const active = await chooser.activeSlot();
    const other = otherSlot(active);
    const holds = (slot: Slot) =>
      steps.step('check-installed', async () => {
        const dev = host.slotDevice(slot);
        return release.size <= dev.size && (await sha256OfDevice(dev, release.size)) === release.sha256;
      });
    const states = await chooser.state();
    const stateOf = (slot: Slot) => states.find((s) => s.slot === slot)!;

    if (await holds(active)) {
      if (!stateOf(active).good) {
        if (!(await steps.step('health', () => host.health()))) return 'reboot'; // not blessed: the counter runs out and falls back
        await steps.step('mark-good', () => chooser.markGood(active));
      }
      say('committed');
      return 'committed';
    }
    // Every install starts by invalidating the slot, so a failed entry is the last install's.
    if (stateOf(other).failed) {
      say('rolled-back', `slot ${other} did not boot healthy with ${release.version}; slot ${active} runs`);
      if (!opts.reinstallAfterRollback) {
        // Keep the slot the boot chain fell back to (as the agent does).
        await steps.step('mark-good', () => chooser.markGood(active));
        return 'rolled-back';
      }
    }
    // A trial the boot chain has not started yet (tryboot: only the reboot the updater asks for
    // sets the firmware's flag, and a power cut loses it): reboot into it, as the agent does.
    const pending = stateOf(other);
    if (pending.bootable && !pending.good && !pending.failed && (await chooser.primarySlot()) === other) return 'reboot';
    say('installing');
    await steps.step('invalidate', () => chooser.invalidate(other));
    if (!(await holds(other))) {
      say('downloading');
      await steps.step('write-slot', () => writeSlot(host.slotDevice(other), release.payload(), { sha256: release.sha256, size: release.size, verity: release.verity }));
    }
    await steps.step('try-once', () => chooser.tryOnce(other, release.boot));
    say('rebooting');
    return 'reboot';
  } catch (err) {
    if (!(err instanceof EdgekitError)) throw err;
    say('failed', err.message);
    return 'failed';
  }
}
