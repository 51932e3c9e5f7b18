/**
 * The simulated firmware of each boot chain the bootchoosers drive, behind one call: one power-on
 * of the board, given what the reboot before it asked for (tryboot's flag).
 */
import { basename } from 'node:path';
import { RPI_MODELS, type RpiModel } from '../../boot/rpi.js';
import type { BootchooserKind } from '../slots/bootchooser.js';
import type { BootAttempt } from './kernel-start.js';
import type { SimLayout } from './layout.js';
import type { SimDisk } from './sim-disk.js';
import { systemdBootAttempt } from './systemd-boot-model.js';
import { trybootAttempt } from './tryboot-model.js';
import { ubootAttempt } from './uboot-model.js';

export interface PowerOnContext {
  workingKernels: Set<string>;
  /** What the reboot that led here passed the kernel; undefined after a power cut or a plain reset. */
  rebootArgument?: string;
}

export interface SimBootChain {
  readonly kind: BootchooserKind;
  /** Extra facts for messages ("rpi4"). */
  readonly board?: string;
  powerOn(disk: SimDisk, layout: SimLayout, ctx: PowerOnContext): Promise<BootAttempt>;
}

export const systemdBootChain: SimBootChain = {
  kind: 'systemd-boot',
  powerOn: (disk, layout, ctx) => systemdBootAttempt(disk, layout, ctx),
};

/** A Raspberry Pi booting U-Boot from the firmware, U-Boot running the builder's boot.scr. */
export function ubootChain(model: RpiModel): SimBootChain {
  return { kind: 'uboot', board: model, powerOn: (disk, layout, ctx) => ubootAttempt(disk, layout, { ...ctx, fdtfile: RPI_MODELS[model].ubootFdtfile }) };
}

/** A Raspberry Pi whose firmware loads the slot itself, config.txt or (once) tryboot.txt. */
export function trybootChain(model: RpiModel): SimBootChain {
  return {
    kind: 'tryboot',
    board: model,
    powerOn: (disk, layout, ctx) =>
      trybootAttempt(disk, layout, { ...ctx, dtb: basename(RPI_MODELS[model].kernelDtb), tryboot: ctx.rebootArgument?.split(/\s+/).includes('tryboot') ?? false }),
  };
}

export function simBootChain(kind: BootchooserKind, model: RpiModel = 'rpi4'): SimBootChain {
  if (kind === 'uboot') return ubootChain(model);
  if (kind === 'tryboot') return trybootChain(model);
  return systemdBootChain;
}
