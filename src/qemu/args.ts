/**
 * The QEMU command line for a run, built as data (no process, no files touched) so it can be
 * inspected and tested on its own. Only TCG is used by default: it works everywhere, KVM does not.
 */
import { EdgekitError } from '../util/errors.js';
import type { QemuArch, UefiFirmware } from './firmware.js';

export type { QemuArch } from './firmware.js';

/** How a board is emulated: what a board's YAML or an image's manifest says about QEMU. */
export interface EmulationSettings {
  arch: QemuArch;
  /** QEMU machine type; default 'q35' (x86_64) or 'virt' (aarch64). */
  machine?: string;
  /** Default 'cortex-a57' on aarch64 'virt' ('max' is several times slower under TCG); QEMU's own otherwise. */
  cpu?: string;
  /** Default 512 on q35/virt; other machines (raspi*) have a fixed size QEMU picks itself. */
  memoryMiB?: number;
  smp?: number;
  firmware?: 'uefi' | 'none';
  /** How the image is attached: 'virtio' (virtio-blk-pci) or 'sd' (SD card; the default on raspi machines). */
  drive?: DriveKind;
  /** NIC model for user networking; default virtio-net-pci (usb-net on raspi machines). */
  nic?: string;
}

export type DriveKind = 'virtio' | 'sd';

/**
 * Where the guest's serial console goes:
 * - 'pipe': QEMU's stdio, read by the session (output, waitFor, write).
 * - 'stdio': as 'pipe', and the session also copies it to this process's terminal and forwards typed keys.
 * - 'pty': a pseudo-terminal that another program opens (see QemuSession.ptyPath).
 */
export type SerialMode = 'stdio' | 'pty' | 'pipe';

export interface HostForward {
  hostPort: number;
  guestPort: number;
}

export interface QemuOptions extends EmulationSettings {
  firmware: 'uefi' | 'none';
  /** Raw disk image. */
  image?: string;
  /** Guest writes go to a temporary overlay that lives as long as QEMU (reboots keep them); the image stays unchanged. */
  snapshot?: boolean;
  kernel?: string;
  initrd?: string;
  append?: string;
  dtb?: string;
  serial: SerialMode;
  net?: { user: true; hostForwards?: HostForward[] };
  /** Make a guest reboot end QEMU (-no-reboot). Off by default: update tests need reboots to work. */
  exitOnReboot?: boolean;
  /** 'tcg' unless the caller knows KVM works on this host. */
  accel?: 'tcg' | 'kvm';
  extraArgs?: string[];
  /** Descriptor directories searched for UEFI firmware (tests point this elsewhere). */
  firmwareDirs?: string[];
}

const DEFAULT_MACHINE: Record<QemuArch, string> = { x86_64: 'q35', aarch64: 'virt' };
const QEMU_BINARY: Record<QemuArch, string> = { x86_64: 'qemu-system-x86_64', aarch64: 'qemu-system-aarch64' };
/** The Debian package to install when the binary is missing. */
export const QEMU_PACKAGE: Record<QemuArch, string> = { x86_64: 'qemu-system-x86', aarch64: 'qemu-system-arm' };

export function qemuBinary(arch: QemuArch): string {
  return QEMU_BINARY[arch];
}

export function machineFor(opts: Pick<QemuOptions, 'arch' | 'machine'>): string {
  return opts.machine ?? DEFAULT_MACHINE[opts.arch];
}

function isRaspi(machine: string): boolean {
  return machine.startsWith('raspi');
}

/** Machines where we choose memory and CPU; fixed boards (raspi*) must keep QEMU's own. */
function isGeneric(machine: string): boolean {
  return machine === 'q35' || machine.startsWith('pc-q35-') || machine === 'virt' || machine.startsWith('virt-');
}

/** QEMU option values separate keys with commas; a literal comma is written twice. */
export function escapeOptionValue(v: string): string {
  return v.replace(/,/g, ',,');
}

function checkPort(p: number, what: string): void {
  if (!Number.isInteger(p) || p < 1 || p > 65535) throw new EdgekitError(`${what} ${p} is not a TCP port (1-65535)`);
}

/**
 * Everything after the binary name. `firmware` and `varsCopy` are given when opts.firmware is 'uefi':
 * the code image read-only, the vars copy writable (the guest stores boot entries there).
 */
export function buildQemuArgs(
  opts: QemuOptions,
  uefi?: { firmware: UefiFirmware; varsCopy: string },
): string[] {
  const machine = machineFor(opts);
  const generic = isGeneric(machine);
  const secureFlash = uefi?.firmware.features.includes('requires-smm') ?? false;
  const args = ['-nodefaults', '-no-user-config', '-display', 'none'];
  args.push('-machine', secureFlash ? `${machine},smm=on` : machine);
  args.push('-accel', opts.accel ?? 'tcg');
  const cpu = opts.cpu ?? (opts.arch === 'aarch64' && generic ? 'cortex-a57' : undefined);
  if (cpu) args.push('-cpu', cpu);
  const memory = opts.memoryMiB ?? (generic ? 512 : undefined);
  if (memory !== undefined) args.push('-m', String(memory));
  if (opts.smp !== undefined) args.push('-smp', String(opts.smp));

  if (opts.firmware === 'uefi') {
    if (!uefi) throw new Error('buildQemuArgs: UEFI firmware not resolved');
    const fmt = uefi.firmware.format;
    // Secure Boot builds only run with their flash locked to SMM.
    if (secureFlash) args.push('-global', 'driver=cfi.pflash01,property=secure,value=on');
    args.push('-drive', `if=pflash,unit=0,format=${fmt},readonly=on,file=${escapeOptionValue(uefi.firmware.code)}`);
    args.push('-drive', `if=pflash,unit=1,format=${fmt},file=${escapeOptionValue(uefi.varsCopy)}`);
  }

  if (opts.kernel) args.push('-kernel', opts.kernel);
  if (opts.initrd) args.push('-initrd', opts.initrd);
  if (opts.append !== undefined) args.push('-append', opts.append);
  if (opts.dtb) args.push('-dtb', opts.dtb);

  if (opts.image) {
    const kind = opts.drive ?? (isRaspi(machine) ? 'sd' : 'virtio');
    // snapshot=on on this drive only: -snapshot would also discard writes to the UEFI vars.
    const snap = opts.snapshot ? ',snapshot=on' : '';
    const file = escapeOptionValue(opts.image);
    if (kind === 'sd') {
      args.push('-drive', `if=sd,format=raw,file=${file}${snap}`);
    } else {
      args.push('-drive', `if=none,id=disk0,format=raw,file=${file}${snap}`);
      // bootindex makes the disk the firmware's only boot entry from QEMU's boot order: without it,
      // OVMF/AAVMF also try PXE and HTTP boot on the NIC, minutes under TCG when the disk has no loader.
      args.push('-device', 'virtio-blk-pci,drive=disk0,bootindex=0');
    }
  }

  if (opts.net?.user) {
    const forwards = (opts.net.hostForwards ?? []).map((f) => {
      checkPort(f.hostPort, 'host port');
      checkPort(f.guestPort, 'guest port');
      // Bound to loopback: a forwarded guest port is for this machine only.
      return `,hostfwd=tcp:127.0.0.1:${f.hostPort}-:${f.guestPort}`;
    });
    args.push('-netdev', `user,id=net0${forwards.join('')}`);
    const nic = opts.nic ?? (isRaspi(machine) ? 'usb-net' : 'virtio-net-pci');
    // romfile= drops iPXE's option ROM: the firmware has its own virtio-net driver, and the ROM's
    // package may not be installed.
    args.push('-device', nic === 'virtio-net-pci' ? `${nic},netdev=net0,romfile=` : `${nic},netdev=net0`);
  }

  // The console is a named chardev so its backend (stdio or pty) is the only thing that varies.
  // signal=off: a Ctrl-C byte on stdin is for the guest, not a request to kill QEMU.
  args.push('-chardev', opts.serial === 'pty' ? 'pty,id=console0' : 'stdio,id=console0,signal=off');
  args.push('-serial', 'chardev:console0');
  if (opts.exitOnReboot) args.push('-no-reboot');
  args.push(...(opts.extraArgs ?? []));
  return args;
}
