/**
 * Busybox applet links. The binary is for the target's architecture, so it cannot be run here to
 * ask `--list`: the applet names are read from the NUL-separated, sorted name table inside it.
 */
export function busyboxApplets(binary: Buffer): string[] {
  const start = binary.indexOf(Buffer.from('[\0[[\0'));
  if (start < 0) throw new Error('busybox applet table not found in the binary');
  const names: string[] = [];
  let pos = start;
  let prev = '';
  for (;;) {
    const end = binary.indexOf(0, pos);
    if (end < 0) break;
    const name = binary.subarray(pos, end).toString('latin1');
    // The table is sorted; the first name out of order or out of shape ends it.
    if (!/^[a-z0-9_.[\-]+$/.test(name) || name <= prev) break;
    names.push(name);
    prev = name;
    pos = end + 1;
  }
  return names.filter((n) => n !== 'busybox');
}

/** Where each applet link goes: system tools in sbin, the rest in bin (as Debian's busybox does). */
const SBIN = new Set([
  'init', 'halt', 'poweroff', 'reboot', 'insmod', 'rmmod', 'modprobe', 'lsmod', 'ifconfig', 'route', 'ip',
  'udhcpc', 'switch_root', 'pivot_root', 'getty', 'mdev', 'mke2fs', 'mkdosfs', 'fdisk', 'klogd', 'syslogd',
  'start-stop-daemon', 'watchdog', 'losetup', 'findfs', 'hwclock', 'sysctl', 'chroot', 'crond',
]);

export function appletPath(applet: string): string {
  return SBIN.has(applet) ? `usr/sbin/${applet}` : `usr/bin/${applet}`;
}
