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

export interface Bootchooser {
  readonly kind: 'systemd-boot' | 'uboot' | 'tryboot';
  /** The slot running now, from the kernel command line's edgekit.slot=. */
  activeSlot(): Promise<Slot>;
  /** The slot the next boot starts, as the boot chain will decide it; null if none. */
  primarySlot(): Promise<Slot | null>;
  /** Makes `slot` unbootable before its partition is overwritten. Never the active slot. */
  invalidate(slot: Slot): Promise<void>;
  /** Installs `files` for `slot` and marks it to be tried on the next boots, with the board's tries. */
  tryOnce(slot: Slot, files: SlotBootFiles): Promise<void>;
  /** Blesses the running slot after a healthy boot: it stays the slot that boots. */
  markGood(slot: Slot): Promise<void>;
  state(): Promise<SlotState[]>;
  /** What `reboot` needs after tryOnce (tryboot: "0 tryboot"); undefined for a plain reboot. */
  rebootArgument(): string | undefined;
}

/** The running slot from a kernel command line. */
export function slotFromCmdline(cmdline: string, where = 'kernel command line'): Slot {
  const m = /(?:^|\s)edgekit\.slot=(\S*)/.exec(cmdline);
  if (!m) throw new EdgekitError(`${where}: no edgekit.slot= (not booted by an edgekit boot chain?)`);
  if (m[1] !== 'a' && m[1] !== 'b') throw new EdgekitError(`${where}: edgekit.slot=${m[1]} is neither a nor b`);
  return m[1];
}

/** The command line with edgekit.slot= set to `slot` (replaced, or appended when missing). */
export function cmdlineForSlot(cmdline: string, slot: Slot): string {
  const words = cmdline.trim().split(/\s+/).filter((w) => w && !w.startsWith('edgekit.slot='));
  return [...words, `edgekit.slot=${slot}`].join(' ');
}

/** Where the running kernel's command line comes from: /proc/cmdline on a device, injected in tests. */
export type CmdlineSource = () => Promise<string>;

export const procCmdline: CmdlineSource = () => readFile('/proc/cmdline', 'utf8');

export function checkTries(tries: number, kind: string): void {
  if (!Number.isInteger(tries) || tries < 1 || tries > 9) throw new EdgekitError(`${kind} bootchooser: tries must be 1..9, got ${tries}`);
}
