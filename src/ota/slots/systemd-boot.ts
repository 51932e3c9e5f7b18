/**
 * systemd-boot with boot counting, on the ESP that holds both slots' kernels.
 *
 * Entries are loader/entries/edgekit-<generation>-<slot>[+<left>[-<done>]].conf. Trying a slot
 * writes slot-x/vmlinuz and slot-x/initrd.img, then creates edgekit-<gen+1>-x+<tries>.conf: the
 * highest generation sorts first, so it boots next; systemd-boot renames it +2-1, +1-2, +0-3 on
 * each boot, and once it is out of tries sorts it last, so the previous generation boots again.
 * Blessing renames it to edgekit-<gen+1>-x.conf: one directory-entry rewrite in one sector.
 */
import { entryConf, entryFileName } from '../../boot/systemd-boot.js';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { checkTries, cmdlineForSlot, otherSlot, procCmdline, refuseActive, slotFromCmdline, type Bootchooser, type CmdlineSource, type Slot, type SlotBootFiles, type SlotState } from './bootchooser.js';

const ENTRIES = 'loader/entries';
const ENTRY_NAME = /^edgekit-(\d+)-([ab])(?:\+(\d+)(?:-(\d+))?)?\.conf$/;

export interface LoaderEntryName {
  file: string;
  generation: number;
  slot: Slot;
  /** Tries left; undefined for an entry without a counter (blessed). */
  left?: number;
  done?: number;
}

export function parseEntryName(file: string): LoaderEntryName | undefined {
  const m = ENTRY_NAME.exec(file);
  if (!m) return undefined;
  return {
    file,
    generation: Number(m[1]),
    slot: m[2] as Slot,
    left: m[3] === undefined ? undefined : Number(m[3]),
    done: m[4] === undefined ? undefined : Number(m[4]),
  };
}

export interface SystemdBootChooserOptions {
  /** Tries a new slot gets (the board's update.tries). */
  tries: number;
  cmdline?: CmdlineSource;
}

export function systemdBootChooser(esp: FatVolume, opts: SystemdBootChooserOptions): Bootchooser {
  checkTries(opts.tries, 'systemd-boot');
  const cmdline = opts.cmdline ?? procCmdline;
  const activeSlot = async () => slotFromCmdline(await cmdline());
  const entries = async (): Promise<LoaderEntryName[]> =>
    (await esp.list(ENTRIES))
      .filter((e) => !e.isDir)
      .map((e) => parseEntryName(e.name))
      .filter((e): e is LoaderEntryName => e !== undefined);
  const invalidate = async (slot: Slot) => {
    await refuseActive('systemd-boot', activeSlot, slot, 'invalidate');
    for (const e of await entries()) if (e.slot === slot) await esp.remove(`${ENTRIES}/${e.file}`);
  };

  return {
    kind: 'systemd-boot',
    activeSlot,
    async primarySlot() {
      // systemd-boot's choice with no default set: the highest id among entries with tries left
      // (or no counter); entries out of tries only when nothing else is left.
      const list = (await entries()).sort((x, y) => y.generation - x.generation);
      return (list.find((e) => e.left !== 0) ?? list[0])?.slot ?? null;
    },
    invalidate,
    async tryOnce(slot, files: SlotBootFiles) {
      await invalidate(slot);
      const generation = Math.max(0, ...(await entries()).map((e) => e.generation)) + 1;
      const dir = `slot-${slot}`;
      await esp.mkdir(dir);
      // No entry names the slot's old files any more: free their room before writing the new ones.
      await esp.remove(`${dir}/vmlinuz`);
      await esp.remove(`${dir}/initrd.img`);
      await esp.writeFile(`${dir}/vmlinuz`, files.kernel);
      if (files.initrd) await esp.writeFile(`${dir}/initrd.img`, files.initrd);
      const conf = entryConf({
        title: files.title ?? `edgekit generation ${generation} (slot ${slot.toUpperCase()})`,
        slot,
        boot: { kernel: `${dir}/vmlinuz`, initrd: `${dir}/initrd.img`, cmdline: cmdlineForSlot(files.cmdline, slot), root: 'disk' },
      });
      // Without an initramfs the entry must not name one.
      const text = files.initrd ? conf : conf.split('\n').filter((l) => !l.startsWith('initrd ')).join('\n');
      // Creating the entry is the switch: one directory-entry write, after everything it names is flushed.
      await esp.writeFile(entryFileName(generation, slot, opts.tries), Buffer.from(text));
    },
    async markGood(slot) {
      if ((await activeSlot()) !== slot) throw new EdgekitError(`systemd-boot bootchooser: cannot mark slot ${slot} good: slot ${otherSlot(slot)} is running`);
      const mine = (await entries()).filter((e) => e.slot === slot).sort((x, y) => y.generation - x.generation)[0];
      if (!mine) throw new EdgekitError(`systemd-boot bootchooser: slot ${slot} has no loader entry to bless`);
      if (mine.left === undefined) return;
      await esp.rename(`${ENTRIES}/${mine.file}`, entryFileName(mine.generation, slot));
    },
    async state() {
      const list = await entries();
      return (['a', 'b'] as const).map((slot): SlotState => {
        const e = list.filter((x) => x.slot === slot).sort((x, y) => y.generation - x.generation)[0];
        if (!e) return { slot, bootable: false };
        return {
          slot,
          bootable: true,
          generation: e.generation,
          tries: e.left,
          good: e.left === undefined,
          failed: e.left === 0,
        };
      });
    },
    prepareReboot: async () => undefined,
  };
}
