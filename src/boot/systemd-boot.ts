/**
 * The ESP of UEFI boards: systemd-boot as the removable-media loader, both slots' kernel and
 * initramfs, and one loader entry per slot.
 *
 * A/B with boot counting: systemd-boot sorts entries by id (version order, highest first) and
 * prefers entries with tries left. An entry named `edgekit-<generation>-<slot>+<tries>.conf` is
 * tried that many times (systemd-boot renames it +2-1, +1-2, ... on each boot), then skipped
 * as bad, so the older generation boots again by itself. Renaming it without the counter
 * (`edgekit-2-b.conf`) blesses it. The generation grows with every installed update, so the newest
 * install sorts first whichever slot it is in.
 */
import type { SlotBoot } from '../image/manifest.js';

export type SlotName = 'a' | 'b';

export function entryFileName(generation: number, slot: SlotName, triesLeft?: number): string {
  return `loader/entries/edgekit-${generation}-${slot}${triesLeft === undefined ? '' : `+${triesLeft}`}.conf`;
}

export function slotDir(slot: SlotName): string {
  return `slot-${slot}`;
}

export function loaderConf(): string {
  // timeout 0: boot the chosen entry without a menu. editor no: the command line carries the
  // verity root hash, so it must not be editable at the console.
  return ['timeout 0', 'editor no', 'auto-entries no', 'auto-firmware no', 'console-mode keep', ''].join('\n');
}

export function entryConf(opts: { title: string; slot: SlotName; boot: SlotBoot }): string {
  const lines = [
    `title ${opts.title}`,
    `linux /${opts.boot.kernel}`,
    `initrd /${opts.boot.initrd}`,
    `options ${opts.boot.cmdline}`,
  ];
  if (opts.boot.devicetree) lines.push(`devicetree /${opts.boot.devicetree}`);
  return lines.join('\n') + '\n';
}
