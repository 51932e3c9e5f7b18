/**
 * The bootchooser: one interface over the boot chains that pick between slot A and slot B
 * (RAUC's word for it). The update agent only talks to this; each adapter keeps the boot chain's
 * own state on the boot partition, changed only through atomic steps (src/fs/fat-edit.ts).
 */
import { readFile } from 'node:fs/promises';
import { EdgekitError } from '../../util/errors.js';

export type Slot = 'a' | 'b';

export function otherSlot(slot: Slot): Slot {
  return slot === 'a' ? 'b' : 'a';
}

/** What a slot boots: its kernel, initramfs and kernel command line (with edgekit.verity=). */
export interface SlotBootFiles {
  kernel: Buffer;
  initrd?: Buffer;
  /** Device trees for the slot's folder, by their path inside it (boot chains that load them from there). */
  devicetrees?: Record<string, Buffer>;
  /** The command line; edgekit.slot= is set to the slot being written whatever it says. */
  cmdline: string;
  title?: string;
}

export interface SlotState {
  slot: Slot;
  /** The boot chain would start this slot (it has an entry / is in the boot order). */
  bootable: boolean;
  /** Tries left before the boot chain gives up on the slot; undefined when not counting. */
  tries?: number;
  /** Marked good (blessed) after a healthy boot. */
  good?: boolean;
  /** Tried and out of tries without being marked good: the boot chain fell back from it. */
  failed?: boolean;
  /** systemd-boot: the install generation in the entry name. */
  generation?: number;
}

export type BootchooserKind = 'systemd-boot' | 'uboot' | 'tryboot';

export interface Bootchooser {
  readonly kind: BootchooserKind;
  /** The slot running now, from the kernel command line's edgekit.slot=. */
  activeSlot(): Promise<Slot>;
  /**
   * The slot the next boot starts, as the boot chain will decide it; null if none. For tryboot:
   * the next reboot the agent makes (a power cut starts the committed slot).
   */
  primarySlot(): Promise<Slot | null>;
  /** Makes `slot` unbootable before its partition is overwritten. Never the active slot. */
  invalidate(slot: Slot): Promise<void>;
  /** Installs `files` for `slot` and marks it to be tried on the next boots, with the board's tries. */
  tryOnce(slot: Slot, files: SlotBootFiles): Promise<void>;
  /** Blesses the running slot after a healthy boot: it stays the slot that boots. */
  markGood(slot: Slot): Promise<void>;
  /**
   * For boot chains that spend a try on every boot, committed slot too (U-Boot's boot.scr): gives
   * the running committed slot its tries back. Called on every agent pass; writes nothing when
   * there is nothing to give back, or when the slot is not committed (a trial, a fallback).
   */
  renewGood?(slot: Slot): Promise<void>;
  state(): Promise<SlotState[]>;
  /**
   * Called right before a reboot the agent asks for. Returns what `reboot` must pass to the kernel
   * ("0 tryboot"), or undefined for a plain reboot. tryboot spends one of the trial's tries here:
   * the Pi firmware's flag is one-shot and cannot count, so the slot arming it counts. The other
   * boot chains count by themselves and change nothing.
   */
  prepareReboot(): Promise<string | undefined>;
}

/** The running slot from a kernel command line (U-Boot's A/B script writes it in capitals). */
export function slotFromCmdline(cmdline: string, where = 'kernel command line'): Slot {
  const m = /(?:^|\s)edgekit\.slot=(\S*)/.exec(cmdline);
  if (!m) throw new EdgekitError(`${where}: no edgekit.slot= (not booted by an edgekit boot chain?)`);
  const slot = m[1].toLowerCase();
  if (slot !== 'a' && slot !== 'b') throw new EdgekitError(`${where}: edgekit.slot=${m[1]} is neither a nor b`);
  return slot;
}

/** The command line with edgekit.slot= set to `slot` (replaced, or appended when missing). */
export function cmdlineForSlot(cmdline: string, slot: Slot): string {
  return [cmdlineWithoutSlot(cmdline), `edgekit.slot=${slot}`].filter(Boolean).join(' ');
}

/** The command line without edgekit.slot= (for boot chains that append it themselves). */
export function cmdlineWithoutSlot(cmdline: string): string {
  return cmdline.trim().split(/\s+/).filter((w) => w && !w.startsWith('edgekit.slot=')).join(' ');
}

/** Refuses to change the running slot's boot state in ways only a slot that is not running may see. */
export async function refuseActive(kind: BootchooserKind, activeSlot: () => Promise<Slot>, slot: Slot, what: string): Promise<void> {
  if ((await activeSlot()) === slot) throw new EdgekitError(`${kind} bootchooser: cannot ${what} slot ${slot}: it is the running slot`);
}

/** Where the running kernel's command line comes from: /proc/cmdline on a device, injected in tests. */
export type CmdlineSource = () => Promise<string>;

export const procCmdline: CmdlineSource = () => readFile('/proc/cmdline', 'utf8');

export function checkTries(tries: number, kind: string): void {
  if (!Number.isInteger(tries) || tries < 1 || tries > 9) throw new EdgekitError(`${kind} bootchooser: tries must be 1..9, got ${tries}`);
}
