/**
 * A simulated device: a disk image with the board's A/B layout on a power-cuttable disk, the boot
 * chain's firmware model (boot-chains.ts), and the running system's view (/proc/cmdline, the
 * bootchooser, slot devices).
 */
import { FatVolume } from '../../fs/fat-edit.js';
import { EdgekitError } from '../../util/errors.js';
import { partitionDevice, type BlockDevice } from '../slots/block-device.js';
import type { Bootchooser, Slot } from '../slots/bootchooser.js';
import { openBootchooser } from '../slots/choosers.js';
import { systemdBootChain, type SimBootChain } from './boot-chains.js';
import type { BootAttempt } from './kernel-start.js';
import type { SimLayout } from './layout.js';
import { PowerCut, SimDisk } from './sim-disk.js';
import type { UpdaterHost } from './scripted-updater.js';

export interface SimDeviceOptions {
  /** The disk image; the simulator changes it in place (give it a copy). */
  image: string;
  layout: SimLayout;
  seed: number;
  /** The board's tries per new slot. */
  tries: number;
  /** Kernels (sha256) that start when booted; see FirmwareOptions. */
  workingKernels: Set<string>;
  writeLimit?: number;
  /** See SimDiskOptions.lyingSync. */
  lyingSync?: boolean;
  /** Power-ons in a row that may fail before the device counts as bricked. */
  maxBootAttempts?: number;
  /** The boot chain's firmware and the bootchooser that goes with it; default systemd-boot. */
  chain?: SimBootChain;
}

export interface Booted {
  slot: Slot;
  entry: string;
  cmdline: string;
}

export class SimDevice {
  booted: Booted | undefined;
  readonly bootLog: BootAttempt[] = [];
  /** What the next reboot passes the firmware (tryboot's flag); a power cut loses it. */
  private rebootArgument: string | undefined;

  private constructor(readonly disk: SimDisk, private readonly opts: SimDeviceOptions) {}

  static async open(opts: SimDeviceOptions): Promise<SimDevice> {
    return new SimDevice(await SimDisk.open(opts.image, { seed: opts.seed, writeLimit: opts.writeLimit, lyingSync: opts.lyingSync }), opts);
  }

  get layout(): SimLayout {
    return this.opts.layout;
  }

  async close(): Promise<void> {
    await this.disk.close();
  }

  /**
   * Powers on until a slot runs. A cut during the firmware's own writes (the counter rename) is
   * handled like any other cut; a boot that fails (crashing kernel, dm-verity) resets and retries.
   */
  async powerOn(): Promise<Booted> {
    this.booted = undefined;
    const max = this.opts.maxBootAttempts ?? 12;
    for (let i = 0; i < max; i++) {
      // The firmware consumes the flag before it starts anything: a failed start or a cut loses it.
      const rebootArgument = this.rebootArgument;
      this.rebootArgument = undefined;
      let attempt: BootAttempt;
      try {
        attempt = await this.chain.powerOn(this.disk, this.opts.layout, { workingKernels: this.opts.workingKernels, rebootArgument });
      } catch (err) {
        if (!(err instanceof PowerCut)) throw err;
        await this.disk.powerCut();
        continue;
      }
      this.bootLog.push(attempt);
      if (!attempt.booted && attempt.stuck) throw new EdgekitError(`simulated device stuck in its boot firmware: ${attempt.reason}`);
      // A failed start leaves nothing unsynced behind; the reset is clean.
      await this.disk.shutdown();
      if (attempt.booted) {
        this.booted = { slot: attempt.slot, entry: attempt.entry, cmdline: attempt.cmdline };
        return this.booted;
      }
    }
    throw new EdgekitError(`simulated device bricked: ${max} power-ons without a slot that boots (last: ${JSON.stringify(this.bootLog[this.bootLog.length - 1])})`);
  }

  /** A clean reboot: caches are written back, then the firmware runs. `argument` is what `reboot` passed the kernel. */
  async reboot(argument?: string): Promise<Booted> {
    await this.disk.shutdown();
    this.rebootArgument = argument;
    return this.powerOn();
  }

  /** The power goes (now, or where a scheduled cut already took it) and comes back. */
  async cutAndPowerOn(): Promise<Booted> {
    this.rebootArgument = undefined;
    await this.disk.powerCut();
    return this.powerOn();
  }

  get chain(): SimBootChain {
    return this.opts.chain ?? systemdBootChain;
  }

  slotDevice(slot: Slot): BlockDevice {
    const r = this.opts.layout.slots[slot];
    return partitionDevice(this.disk, r.start, r.size, `slot ${slot}`);
  }

  async bootVolume(): Promise<FatVolume> {
    return FatVolume.open(this.disk, this.opts.layout.boot.start);
  }

  /** The bootchooser over `volume` (pass the one the caller already edits: each keeps the FAT in memory). */
  async chooser(volume?: FatVolume): Promise<Bootchooser> {
    return openBootchooser(this.chain.kind, volume ?? (await this.bootVolume()), { tries: this.opts.tries, cmdline: async () => this.cmdline() });
  }

  /** /proc/cmdline of the running system. */
  cmdline(): string {
    if (!this.booted) throw new Error('the simulated device is not running');
    return this.booted.cmdline;
  }

  /** What the updater sees in the running system; `health` decides the health check. */
  async host(health: (b: Booted) => Promise<boolean> = async () => true): Promise<UpdaterHost> {
    const booted = this.booted;
    if (!booted) throw new Error('the simulated device is not running');
    const boot = await this.bootVolume();
    return { chooser: await this.chooser(boot), boot, slotDevice: (s) => this.slotDevice(s), health: () => health(booted) };
  }
}
