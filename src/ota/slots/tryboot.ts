/**
 * The Raspberry Pi firmware's own A/B ("tryboot"), in the file-level form the builder lays out
 * (src/boot/rpi.ts): one FAT boot partition, each slot's kernel, initramfs, cmdline.txt and device
 * tree in slot-a/ or slot-b/, config.txt naming the committed slot with `os_prefix=`, and
 * tryboot.txt naming the slot on trial. After `reboot "0 tryboot"` the firmware reads tryboot.txt
 * instead of config.txt for that one boot; it clears the flag before it starts anything, so a
 * crash, a watchdog reset or a power cut brings back config.txt's slot.
 *
 * The flag cannot count, so the arming side does: tryboot.txt starts with
 * `# edgekit trial: slot b, tries left N` (the firmware skips comments), and prepareReboot()
 * spends one try before each tryboot reboot. A trial out of tries is not armed again: the slot
 * failed. Marking good rewrites config.txt's `os_prefix=` (the commit), then removes tryboot.txt.
 *
 * config.txt and tryboot.txt are replaced whole through FatVolume.writeFile (new clusters, then one
 * directory-entry sector): the firmware reads the old file or the new one after a power cut.
 */
import { configOsPrefix, slotDir, withOsPrefix } from '../../boot/rpi.js';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { writeSlotDevicetrees } from './slot-devicetrees.js';
import {
  checkTries,
  cmdlineForSlot,
  otherSlot,
  procCmdline,
  refuseActive,
  slotFromCmdline,
  type Bootchooser,
  type CmdlineSource,
  type Slot,
  type SlotBootFiles,
  type SlotState,
} from './bootchooser.js';

export const CONFIG_TXT = 'config.txt';
export const TRYBOOT_TXT = 'tryboot.txt';
/** What `reboot` passes the kernel to set the firmware's one-shot flag (partition 0: the default one). */
export const TRYBOOT_REBOOT_ARGUMENT = '0 tryboot';

const TRIAL_LINE = /^# edgekit trial: slot ([ab]), tries left (\d+)\n/;

export interface TrybootChooserOptions {
  /** Trial boots a new slot gets (the board's update.tries). */
  tries: number;
  cmdline?: CmdlineSource;
}

interface TrybootFiles {
  committed: Slot;
  config: string;
  trial?: { slot: Slot; left: number; text: string };
}

/** The slot an `os_prefix=slot-x/` names; undefined for anything else. */
export function slotOfPrefix(prefix: string | undefined): Slot | undefined {
  const m = /^slot-([ab])\/$/.exec(prefix ?? '');
  return m ? (m[1] as Slot) : undefined;
}

/** tryboot.txt for a trial of `slot` with `left` tries, from the committed config.txt. */
export function trialText(config: string, slot: Slot, left: number): string {
  return `# edgekit trial: slot ${slot}, tries left ${left}\n` + withOsPrefix(config, `${slotDir(slot)}/`);
}

export function trybootChooser(boot: FatVolume, opts: TrybootChooserOptions): Bootchooser {
  checkTries(opts.tries, 'tryboot');
  const cmdline = opts.cmdline ?? procCmdline;
  const activeSlot = async () => slotFromCmdline(await cmdline());

  const read = async (): Promise<TrybootFiles> => {
    const config = (await boot.readFile(CONFIG_TXT)).toString('utf8');
    const committed = slotOfPrefix(configOsPrefix(config));
    if (!committed) throw new EdgekitError(`tryboot bootchooser: ${CONFIG_TXT} names no slot folder (os_prefix=slot-a/ or slot-b/)`);
    if (!(await boot.stat(TRYBOOT_TXT))) return { committed, config };
    const text = (await boot.readFile(TRYBOOT_TXT)).toString('utf8');
    const m = TRIAL_LINE.exec(text);
    // A tryboot.txt this adapter did not write, or the leftover of a commit cut short: no trial.
    if (!m || m[1] === committed || slotOfPrefix(configOsPrefix(text)) !== m[1]) return { committed, config };
    return { committed, config, trial: { slot: m[1] as Slot, left: Number(m[2]), text } };
  };

  const invalidate = async (slot: Slot) => {
    await refuseActive('tryboot', activeSlot, slot, 'invalidate');
    const f = await read();
    if (f.committed === slot) throw new EdgekitError(`tryboot bootchooser: cannot invalidate slot ${slot}: ${CONFIG_TXT} boots it (it is the committed slot)`);
    if (await boot.stat(TRYBOOT_TXT)) await boot.remove(TRYBOOT_TXT);
  };

  return {
    kind: 'tryboot',
    activeSlot,
    async primarySlot() {
      const f = await read();
      return f.trial && f.trial.left > 0 ? f.trial.slot : f.committed;
    },
    invalidate,
    async tryOnce(slot, files: SlotBootFiles) {
      await invalidate(slot);
      const active = otherSlot(slot);
      const dir = slotDir(slot);
      await boot.mkdir(dir);
      for (const f of ['vmlinuz', 'initrd.img', 'cmdline.txt']) await boot.remove(`${dir}/${f}`);
      await boot.writeFile(`${dir}/vmlinuz`, files.kernel);
      if (files.initrd) await boot.writeFile(`${dir}/initrd.img`, files.initrd);
      await boot.writeFile(`${dir}/cmdline.txt`, Buffer.from(cmdlineForSlot(files.cmdline, slot) + '\n'));
      // The firmware drops os_prefix unless the slot folder holds the board's device tree too: the
      // release's, and (from a release without any) the ones the running slot has.
      await writeSlotDevicetrees(boot, dir, files.devicetrees);
      const have = new Set((await boot.list(dir)).map((e) => e.name.toLowerCase()));
      for (const e of await boot.list(slotDir(active))) {
        if (!e.isDir && e.name.toLowerCase().endsWith('.dtb') && !have.has(e.name.toLowerCase())) {
          await boot.writeFile(`${dir}/${e.name}`, await boot.readFile(`${slotDir(active)}/${e.name}`));
        }
      }
      // The switch: tryboot.txt appears, after everything it names is flushed.
      const f = await read();
      await boot.writeFile(TRYBOOT_TXT, Buffer.from(trialText(f.config, slot, opts.tries)));
    },
    async markGood(slot) {
      if ((await activeSlot()) !== slot) throw new EdgekitError(`tryboot bootchooser: cannot mark slot ${slot} good: slot ${otherSlot(slot)} is running`);
      const f = await read();
      // The commit: config.txt names this slot from now on.
      if (f.committed !== slot) await boot.writeFile(CONFIG_TXT, Buffer.from(withOsPrefix(f.config, `${slotDir(slot)}/`)));
      if (await boot.stat(TRYBOOT_TXT)) await boot.remove(TRYBOOT_TXT);
    },
    async state() {
      const f = await read();
      return (['a', 'b'] as const).map((slot): SlotState => {
        if (slot === f.committed) return { slot, bootable: true, good: true };
        if (f.trial?.slot === slot) return { slot, bootable: f.trial.left > 0, tries: f.trial.left, good: false, failed: f.trial.left === 0 };
        return { slot, bootable: false };
      });
    },
    async prepareReboot() {
      const f = await read();
      if (!f.trial || f.trial.left <= 0) return undefined;
      // Spent before the reboot: a trial that never comes back (crash, power cut) has used it.
      await boot.writeFile(TRYBOOT_TXT, Buffer.from(f.trial.text.replace(TRIAL_LINE, `# edgekit trial: slot ${f.trial.slot}, tries left ${f.trial.left - 1}\n`)));
      return TRYBOOT_REBOOT_ARGUMENT;
    },
  };
}
