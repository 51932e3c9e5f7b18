/**
 * The update agent runs its work as named steps through a StepDriver. On a device the driver just
 * runs them; in the simulator it can cut the power between any two steps, so tests name the point
 * of a cut ("after the slot is written, before the switch") instead of counting disk operations.
 */
import type { SimDisk } from './sim-disk.js';

export type UpdateStepName = 'repair-boot' | 'check-installed' | 'invalidate' | 'write-slot' | 'try-once' | 'health' | 'mark-good' | 'prepare-reboot';

export interface StepDriver {
  step<T>(name: UpdateStepName, run: () => Promise<T>): Promise<T>;
}

export const directSteps: StepDriver = { step: (_name, run) => run() };

/** Cuts the power of `disk` right before the first step `cutBefore` says yes to (once). */
export function cuttingSteps(disk: SimDisk, cutBefore: (name: UpdateStepName) => boolean): StepDriver & { fired: boolean } {
  const driver = {
    fired: false,
    async step<T>(name: UpdateStepName, run: () => Promise<T>): Promise<T> {
      if (!driver.fired && cutBefore(name)) {
        driver.fired = true;
        disk.cutNow();
      }
      return run();
    },
  };
  return driver;
}
