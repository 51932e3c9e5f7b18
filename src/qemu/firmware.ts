/**
 * UEFI firmware discovery through QEMU's firmware descriptors (docs/interop/firmware.json in QEMU).
 * File names of OVMF/AAVMF builds differ between distributions and releases; the descriptors that
 * the firmware packages install are the stable way to find the code image and its vars template.
 */
import { readdirSync, readFileSync, statSync, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { EdgekitError } from '../util/errors.js';

export type QemuArch = 'x86_64' | 'aarch64';

export interface UefiFirmware {
  /** Read-only code image, attached as pflash unit 0. */
  code: string;
  /** Pristine variable store; each boot gets a writable copy as pflash unit 1. */
  varsTemplate: string;
  format: 'raw' | 'qcow2';
  /** The descriptor file this came from, for error messages and debugging. */
  descriptor: string;
  features: string[];
}

/** Debian package that ships the firmware for each architecture: named in the error when none is found. */
const FIRMWARE_PACKAGE: Record<QemuArch, string> = { x86_64: 'ovmf', aarch64: 'qemu-efi-aarch64' };

/**
 * Descriptor directories, lowest priority first. A file in a later directory replaces the file of the
 * same name in an earlier one; an empty file masks it (QEMU's documented lookup rule).
 */
export function defaultDescriptorDirs(): string[] {
  const configHome = process.env.XDG_CONFIG_HOME || join(homedir(), '.config');
  return ['/usr/share/qemu/firmware', '/etc/qemu/firmware', join(configHome, 'qemu', 'firmware')];
}

/** Machine-type aliases that descriptors never name: they list versioned types ('pc-q35-*'). */
const MACHINE_ALIAS_PREFIX: Record<string, string> = { q35: 'pc-q35-', pc: 'pc-i440fx-', virt: 'virt-' };

function globToRegExp(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/** Whether a descriptor's machine glob covers `machine` (an alias matches through its versioned form). */
function machineMatches(glob: string, machine: string): boolean {
  const re = globToRegExp(glob);
  if (re.test(machine)) return true;
  const prefix = MACHINE_ALIAS_PREFIX[machine];
  // 'q35' stands for the newest 'pc-q35-X.Y'; any version is a fair stand-in for matching globs.
  return prefix !== undefined && re.test(`${prefix}99.0`);
}

interface Descriptor {
  'interface-types'?: unknown;
  mapping?: {
    device?: unknown;
    mode?: unknown;
    executable?: { filename?: unknown; format?: unknown };
    'nvram-template'?: { filename?: unknown; format?: unknown };
  };
  targets?: Array<{ architecture?: unknown; machines?: unknown }>;
  features?: unknown;
}

/** Descriptor paths in priority order: sorted by file name, each name resolved to its highest-priority directory. */
export function listDescriptors(dirs: string[] = defaultDescriptorDirs()): string[] {
  const byName = new Map<string, string>();
  for (const dir of dirs) {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      continue; // a missing directory is normal (/etc/qemu/firmware rarely exists)
    }
    for (const name of names) {
      if (name.endsWith('.json')) byName.set(name, join(dir, name));
    }
  }
  return [...byName.keys()]
    .sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)))
    .map((name) => byName.get(name)!)
    .filter((path) => statSync(path).size > 0);
}

function stringArray(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** The usable firmware a descriptor describes for `arch`/`machine`, or undefined when it does not fit. */
function firmwareFrom(path: string, arch: QemuArch, machine: string | undefined): UefiFirmware | undefined {
  let d: Descriptor;
  try {
    d = JSON.parse(readFileSync(path, 'utf8')) as Descriptor;
  } catch {
    return undefined; // a broken descriptor from some other package must not stop us using a good one
  }
  if (!stringArray(d['interface-types']).includes('uefi')) return undefined;
  const m = d.mapping;
  // Only split flash (code + separate vars) fits how we attach firmware; 'combined'/'stateless' do not.
  if (!m || m.device !== 'flash' || (m.mode !== undefined && m.mode !== 'split')) return undefined;
  const code = m.executable?.filename;
  const vars = m['nvram-template']?.filename;
  const format = m.executable?.format ?? 'raw';
  if (typeof code !== 'string' || typeof vars !== 'string') return undefined;
  if (format !== 'raw' && format !== 'qcow2') return undefined;
  if ((m['nvram-template']?.format ?? 'raw') !== format) return undefined;
  const fits = (d.targets ?? []).some(
    (t) =>
      t.architecture === arch &&
      (machine === undefined || stringArray(t.machines).some((g) => machineMatches(g, machine))),
  );
  if (!fits) return undefined;
  if (!existsSync(code) || !existsSync(vars)) return undefined;
  return { code, varsTemplate: vars, format, descriptor: path, features: stringArray(d.features) };
}

/** Secure Boot needs SMM and enrolled keys reject our own unsigned loaders: such firmware is a last resort. */
function isPlain(fw: UefiFirmware): boolean {
  return !fw.features.some((f) => f === 'secure-boot' || f === 'enrolled-keys' || f === 'requires-smm');
}

/**
 * The UEFI firmware QEMU would pick for `arch` (and `machine`, when given): descriptors in priority
 * order, plain firmware before Secure Boot builds.
 */
export function findUefiFirmware(
  arch: QemuArch,
  opts: { machine?: string; dirs?: string[] } = {},
): UefiFirmware {
  const candidates = listDescriptors(opts.dirs)
    .map((p) => firmwareFrom(p, arch, opts.machine))
    .filter((fw): fw is UefiFirmware => fw !== undefined);
  const chosen = candidates.find(isPlain) ?? candidates[0];
  if (!chosen) {
    const where = (opts.dirs ?? defaultDescriptorDirs()).join(', ');
    throw new EdgekitError(
      `no UEFI firmware for ${arch}${opts.machine ? ` (machine ${opts.machine})` : ''} described in ${where}: install the ${FIRMWARE_PACKAGE[arch]} package`,
    );
  }
  return chosen;
}
