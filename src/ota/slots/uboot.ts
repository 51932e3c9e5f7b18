/**
 * U-Boot's boot counter on the Raspberry Pi boot partition, as the builder's boot.scr
 * (src/boot/uboot-script.ts) keeps it in uboot.env: BOOT_ORDER and one BOOT_<S>_LEFT per slot.
 *
 * What the script does on every boot: take the first slot in BOOT_ORDER whose counter is above 0,
 * spend one try, save the environment (in place, `fatwrite`), boot the slot; with no tries left
 * anywhere, set every counter back to `tries`, save, reset. A variable that is missing or empty
 * counts as its default (BOOT_ORDER "A B", counters `tries`). An environment that fails its CRC
 * (U-Boot's own save cut by a power loss) is replaced by U-Boot's built-in one, which has no
 * BOOT_ variables: the script then starts over from those defaults.
 *
 * How the adapter uses that:
 * - committed: the slot is alone in BOOT_ORDER. Its counter still runs down a try per boot; the
 *   agent gives the tries back on every pass (renewGood), else it would start over when it
 *   reaches 0 (one extra reset). There is no other slot to fall to either way;
 * - on trial: BOOT_ORDER "<new> <old>", both counters full. After `tries` boots that never got
 *   marked good, the old slot boots again by itself;
 * - marking good puts the slot alone in BOOT_ORDER; invalidating takes a slot out of it.
 *
 * Every change replaces the whole file through FatVolume.writeFile (new clusters, then one
 * directory-entry sector): after a power cut U-Boot reads the old environment or the new one,
 * never a mix. Variables other than the A/B state are kept as they are.
 */
import { buildUbootEnv, parseUbootEnv } from '../../boot/uboot.js';
import { counterVar } from '../../boot/uboot-script.js';
import { RPI_UBOOT_ENV, rpiUbootBaseEnv, slotDir } from '../../boot/rpi.js';
import type { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { writeSlotDevicetrees } from './slot-devicetrees.js';
import {
  checkTries,
  cmdlineWithoutSlot,
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

export interface UbootChooserOptions {
  /** Tries a slot on trial gets: the board's update.tries, which the builder also gave boot.scr. */
  tries: number;
  cmdline?: CmdlineSource;
  /** Where U-Boot keeps its environment on the boot partition; default the Raspberry Pi builds' (uboot.env, 16 KiB, one copy). */
  env?: { file: string; size: number };
  /** Written with the A/B state when U-Boot could not read the environment; default the shipped variables. */
  baseEnv?: Record<string, string>;
}

const NAME: Record<Slot, string> = { a: 'A', b: 'B' };
const SLOTS: Slot[] = ['a', 'b'];

/** The A/B state as the script reads it, defaults applied. */
export interface UbootAbView {
  /** Slots in BOOT_ORDER the script knows, in order, once each. */
  order: Slot[];
  left: Record<Slot, number>;
}

/** U-Boot's simple_strtol(text, NULL, 0) for what `test ... -gt 0` compares: 0x hex, 0 octal, decimal; junk ends the number. */
export function ubootNumber(text: string): number {
  const t = text.trim();
  const m = /^([+-]?)(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)?/.exec(t)!;
  if (!m[2]) return 0;
  const digits = m[2];
  const n = /^0[xX]/.test(digits) ? parseInt(digits.slice(2) || '0', 16) : digits.length > 1 && digits.startsWith('0') ? parseInt(digits, 8) : parseInt(digits, 10);
  return m[1] === '-' ? -n : n;
}

/** BOOT_ORDER and the counters as boot.scr reads them (missing or empty: its defaults). */
export function abView(vars: Record<string, string>, tries: number): UbootAbView {
  const orderText = vars.BOOT_ORDER ?? '';
  const words = (orderText !== '' ? orderText : SLOTS.map((s) => NAME[s]).join(' ')).split(/\s+/);
  const order: Slot[] = [];
  for (const w of words) {
    const s = SLOTS.find((x) => NAME[x] === w);
    if (s && !order.includes(s)) order.push(s);
  }
  const left = {} as Record<Slot, number>;
  for (const s of SLOTS) {
    const v = vars[counterVar(NAME[s])];
    left[s] = v === undefined || v === '' ? tries : ubootNumber(v);
  }
  return { order, left };
}

/** The slot boot.scr starts next from this state (after its counter reset when no slot has tries); null: none. */
export function nextUbootSlot(v: UbootAbView): Slot | null {
  return v.order.find((s) => v.left[s] > 0) ?? v.order[0] ?? null;
}

export function ubootSlotStates(v: UbootAbView): SlotState[] {
  const anyLeft = v.order.some((s) => v.left[s] > 0);
  return SLOTS.map((slot): SlotState => {
    const inOrder = v.order.includes(slot);
    if (!inOrder) return { slot, bootable: false };
    const onTrial = v.order[0] === slot && v.order.length > 1;
    const left = v.left[slot];
    return {
      slot,
      // With no tries left anywhere the script starts every counter over: the slots in the order boot again.
      bootable: left > 0 || !anyLeft,
      tries: left,
      good: !onTrial,
      failed: onTrial && left <= 0 && anyLeft,
    };
  });
}

interface EnvFile {
  vars: Record<string, string>;
  /** False when U-Boot cannot use the file (missing, wrong size, CRC): it boots with its built-in environment. */
  readable: boolean;
}

export function ubootChooser(boot: FatVolume, opts: UbootChooserOptions): Bootchooser {
  checkTries(opts.tries, 'uboot');
  const envFile = opts.env ?? { file: RPI_UBOOT_ENV.file, size: RPI_UBOOT_ENV.size };
  const cmdline = opts.cmdline ?? procCmdline;
  const activeSlot = async () => slotFromCmdline(await cmdline());

  const read = async (): Promise<EnvFile> => {
    let buf: Buffer;
    try {
      buf = await boot.readFile(envFile.file);
    } catch (err) {
      if (err instanceof EdgekitError) return { vars: {}, readable: false };
      throw err;
    }
    if (buf.length !== envFile.size) return { vars: {}, readable: false };
    try {
      return { vars: parseUbootEnv(buf).vars, readable: true };
    } catch (err) {
      if (err instanceof EdgekitError) return { vars: {}, readable: false };
      throw err;
    }
  };

  /** Writes the A/B state (every BOOT_ variable explicit), keeping the rest; nothing when nothing changes. */
  const save = async (cur: EnvFile, order: Slot[], left: Record<Slot, number>) => {
    const vars: Record<string, string> = { ...(cur.readable ? cur.vars : (opts.baseEnv ?? rpiUbootBaseEnv())) };
    vars.BOOT_ORDER = order.map((s) => NAME[s]).join(' ');
    for (const s of SLOTS) vars[counterVar(NAME[s])] = String(left[s]);
    if (cur.readable && sameVars(vars, cur.vars)) return;
    await boot.writeFile(envFile.file, buildUbootEnv(vars, { size: envFile.size }));
  };

  const invalidate = async (slot: Slot) => {
    const active = await activeSlot();
    await refuseActive('uboot', async () => active, slot, 'invalidate');
    const cur = await read();
    const v = abView(cur.vars, opts.tries);
    const order = v.order.filter((s) => s !== slot);
    await save(cur, order.length ? order : [active], { ...v.left, [slot]: 0 });
  };

  return {
    kind: 'uboot',
    activeSlot,
    async primarySlot() {
      return nextUbootSlot(abView((await read()).vars, opts.tries));
    },
    invalidate,
    async tryOnce(slot, files: SlotBootFiles) {
      await invalidate(slot);
      const dir = slotDir(NAME[slot]);
      await boot.mkdir(dir);
      // Nothing boots the slot now: free its old files' room before writing the new ones.
      for (const f of ['vmlinuz', 'initrd.img', 'cmdline.txt']) await boot.remove(`${dir}/${f}`);
      await boot.writeFile(`${dir}/vmlinuz`, files.kernel);
      if (files.initrd) await boot.writeFile(`${dir}/initrd.img`, files.initrd);
      // boot.scr appends edgekit.slot=<slot> itself.
      await boot.writeFile(`${dir}/cmdline.txt`, Buffer.from(cmdlineWithoutSlot(files.cmdline) + '\n'));
      // The release's device trees, where boot.scr looks for the slot's own (${fdtfile} in the folder).
      await writeSlotDevicetrees(boot, dir, files.devicetrees);
      // The switch: one environment write, after everything the slot boots from is flushed.
      const cur = await read();
      const active = otherSlot(slot);
      await save(cur, [slot, active], { [slot]: opts.tries, [active]: opts.tries } as Record<Slot, number>);
    },
    async markGood(slot) {
      if ((await activeSlot()) !== slot) throw new EdgekitError(`uboot bootchooser: cannot mark slot ${slot} good: slot ${otherSlot(slot)} is running`);
      const cur = await read();
      await save(cur, [slot], { [slot]: opts.tries, [otherSlot(slot)]: 0 } as Record<Slot, number>);
    },
    async renewGood(slot) {
      if ((await activeSlot()) !== slot) return;
      const cur = await read();
      if (!cur.readable) return;
      const v = abView(cur.vars, opts.tries);
      if (v.order.length !== 1 || v.order[0] !== slot || v.left[slot] >= opts.tries) return;
      await save(cur, [slot], { ...v.left, [slot]: opts.tries });
    },
    async state() {
      return ubootSlotStates(abView((await read()).vars, opts.tries));
    },
    prepareReboot: async () => undefined,
  };
}

function sameVars(a: Record<string, string>, b: Record<string, string>): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
}
