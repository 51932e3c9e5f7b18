/**
 * The small amount of system configuration an edgekit image needs, generated from the image spec:
 * accounts, hostname, busybox init's inittab, the boot-time rc script, supervised services, DHCP.
 * Everything is plain shell for busybox: no systemd, no udev.
 */
import type { Board } from '../spec/board.js';
import type { ImageSpec } from '../spec/image-spec.js';
import type { Tree } from './tree.js';

export interface PartitionRef {
  role: string;
  number: number;
}

export interface SystemOptions {
  spec: ImageSpec;
  board: Board;
  table: 'gpt' | 'mbr';
  partitions: PartitionRef[];
  /** Extra modules to load in rc (after the initramfs's), in order. */
  modules: string[];
}

export function addSystemConfig(tree: Tree, o: SystemOptions): void {
  const { spec, board } = o;
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'data', 'config', 'root', 'etc/edgekit', 'var']) tree.dir(d);
  tree.dir('tmp', 0o1777);
  tree.dir('root', 0o700);
  tree.symlink('var/run', '../run');
  tree.symlink('var/tmp', '../tmp');
  tree.symlink('var/lib', '../data/var/lib');
  tree.symlink('var/log', '../run/log');
  tree.symlink('etc/resolv.conf', '../run/resolv.conf');
  tree.symlink('etc/mtab', '../proc/self/mounts');

  const users = [{ name: 'root', uid: 0, shell: '/bin/sh', home: '/root', authorizedKeys: [] as string[] }];
  let nextUid = 1000;
  for (const u of spec.users) {
    const existing = users.find((x) => x.name === u.name);
    if (existing) {
      existing.authorizedKeys = u.authorizedKeys;
      existing.shell = u.shell;
      continue;
    }
    const uid = u.uid ?? nextUid++;
    users.push({ name: u.name, uid, shell: u.shell, home: `/home/${u.name}`, authorizedKeys: u.authorizedKeys });
  }
  tree.file('etc/passwd', users.map((u) => `${u.name}:x:${u.uid}:${u.uid}::${u.home}:${u.shell}\n`).join('') + 'nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n');
  tree.file('etc/group', users.map((u) => `${u.name}:x:${u.uid}:\n`).join('') + 'nogroup:x:65534:\n');
  // Passwords are locked: access is by ssh key only; the console offers no shell without one.
  tree.file('etc/shadow', users.map((u) => `${u.name}:*:1::::::\n`).join('') + 'nobody:*:1::::::\n', 0o600);
  tree.file('etc/shells', '/bin/sh\n');
  for (const u of users) {
    tree.dir(u.home.slice(1), 0o700, u.uid, u.uid);
    if (u.authorizedKeys.length) {
      tree.dir(`${u.home.slice(1)}/.ssh`, 0o700, u.uid, u.uid);
      tree.file(`${u.home.slice(1)}/.ssh/authorized_keys`, u.authorizedKeys.join('\n') + '\n', 0o600, u.uid, u.uid);
    }
  }

  tree.file('etc/hostname', `${spec.hostname}\n`);
  tree.file('etc/hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${spec.hostname}\n::1\tlocalhost\n`);
  tree.file('etc/os-release', osRelease(spec));

  tree.file('etc/edgekit/partitions', partitionsFile(o));
  tree.file('etc/edgekit/modules', o.modules.map((m) => `${m}\n`).join(''));
  tree.file('etc/edgekit/marker', `${spec.marker}\n`);
  tree.file('etc/edgekit/lib.sh', LIB_SH, 0o755);
  tree.file('etc/edgekit/rc.sysinit', RC_SYSINIT, 0o755);
  tree.file('etc/edgekit/rc.shutdown', RC_SHUTDOWN, 0o755);
  tree.file('etc/edgekit/udhcpc.script', UDHCPC_SCRIPT, 0o755);
  tree.file('etc/edgekit/network', spec.network.dhcp.map((i) => `dhcp ${i}\n`).join(''));

  const inittab = [
    '# busybox init: edgekit rc at boot, supervised services, a login prompt on the console.',
    '::sysinit:/etc/edgekit/rc.sysinit',
    ...spec.services.map((s) => `::respawn:/etc/edgekit/service ${s.name}`),
    `${board.console.device}::respawn:/usr/sbin/getty -L ${board.console.baud} ${board.console.device} vt100`,
    '::ctrlaltdel:/usr/sbin/reboot',
    '::shutdown:/etc/edgekit/rc.shutdown',
    '',
  ].join('\n');
  tree.file('etc/inittab', inittab);
  tree.file('etc/edgekit/service', SERVICE_SH, 0o755);
  for (const s of spec.services) {
    tree.file(`etc/edgekit/services/${s.name}`, `user=${s.user ?? 'root'}\ncommand=${s.command}\n`);
  }
}

function osRelease(spec: ImageSpec): string {
  return [
    `NAME="edgekit ${spec.name}"`,
    `PRETTY_NAME="edgekit ${spec.name} ${spec.version}"`,
    `ID=edgekit`,
    `ID_LIKE=debian`,
    `VERSION_ID="${spec.version}"`,
    `IMAGE_ID=${spec.name}`,
    `IMAGE_VERSION=${spec.version}`,
    '',
  ].join('\n');
}

/** `role number` lines; `table` says how /init and rc find them (GPT name or MBR number). */
function partitionsFile(o: SystemOptions): string {
  const disk = `/dev/${o.board.disk.device}${o.board.disk.partitionPrefix}`;
  return [`table ${o.table}`, `disk ${disk}`, ...o.partitions.map((p) => `part ${p.role} ${p.number}`), ''].join('\n');
}

/** Shared shell functions for /init and rc: finding partitions, reading the command line. */
export const LIB_SH = `# edgekit shell library (sourced by /init and rc scripts)
log() { echo "edgekit: $*" > /dev/console; }

# cmdline_arg NAME: the value of NAME=value on the kernel command line
cmdline_arg() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "\${w#*=}"; return 0 ;; esac
  done
  return 1
}

# partition_dev ROLE: the device node of a partition, waiting up to 10 s for it to appear.
# GPT partitions are found by name (any disk); MBR ones by number on the board's boot disk.
partition_dev() {
  local role="$1" table disk number i dev
  table=$(sed -n 's/^table //p' /etc/edgekit/partitions)
  disk=$(sed -n 's/^disk //p' /etc/edgekit/partitions)
  number=$(sed -n "s/^part $role //p" /etc/edgekit/partitions)
  [ -n "$number" ] || return 1
  i=0
  while [ $i -lt 100 ]; do
    if [ "$table" = gpt ]; then
      for u in /sys/class/block/*/uevent; do
        if grep -qx "PARTNAME=$role" "$u" 2>/dev/null; then
          dev=/dev/$(sed -n 's/^DEVNAME=//p' "$u")
          [ -b "$dev" ] && { echo "$dev"; return 0; }
        fi
      done
    else
      dev="$disk$number"
      [ -b "$dev" ] && { echo "$dev"; return 0; }
    fi
    i=$((i + 1))
    sleep 0.1
  done
  return 1
}

load_modules() {
  [ -f "$1" ] || return 0
  while read -r m; do
    [ -n "$m" ] || continue
    insmod "/usr/lib/modules/edgekit/$m.ko" 2>/dev/null || grep -q "^$(echo "$m" | tr - _) " /proc/modules || log "module $m failed to load"
  done < "$1"
}
`;

const RC_SYSINIT = `#!/bin/sh
# Runs once at boot (busybox init's sysinit): mounts, state, hostname, network; then the marker.
. /etc/edgekit/lib.sh
export PATH=/usr/sbin:/usr/bin
[ -e /proc/mounts ] || mount -t proc proc /proc
mountpoint() { grep -q " $1 " /proc/mounts; }
mountpoint /sys || mount -t sysfs sysfs /sys
mountpoint /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mountpoint /dev/pts || mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mountpoint /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mountpoint /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /run/log
load_modules /etc/edgekit/modules

# Writable state: the data partition, formatted on first boot (it ships empty); RAM if absent.
if dev=$(partition_dev data); then
  if ! mount -t ext4 -o noatime,nosuid,nodev "$dev" /data 2>/dev/null; then
    log "formatting the data partition $dev (first boot)"
    mke2fs -q -L data "$dev" >/dev/null 2>&1 && mount -t ext4 -o noatime,nosuid,nodev "$dev" /data
  fi
fi
mountpoint /data || mount -t tmpfs -o mode=0755 tmpfs /data
mkdir -p /data/var/lib

# Per-device settings written at flash time (unsigned; files listed in src/flash/device-config.ts):
# read-only, root-only (wifi.conf and provisioning-token are secrets), and never executed.
if dev=$(partition_dev config); then
  mount -t vfat -o ro,nosuid,nodev,noexec,fmask=0177,dmask=0077 "$dev" /config 2>/dev/null
fi
hostname=$(cat /config/hostname 2>/dev/null | tr -d '\\r\\n')
[ -n "$hostname" ] || hostname=$(cat /etc/hostname)
hostname "$hostname"
log "hostname $hostname"
# Extra ssh keys: root's home becomes a copy in /run with them appended (the image's root may be read-only).
if [ -s /config/authorized_keys ]; then
  mkdir -p /run/edgekit/root && cp -a /root/. /run/edgekit/root/ && mkdir -p /run/edgekit/root/.ssh
  tr -d '\\r' < /config/authorized_keys >> /run/edgekit/root/.ssh/authorized_keys
  chmod 700 /run/edgekit/root /run/edgekit/root/.ssh && chmod 600 /run/edgekit/root/.ssh/authorized_keys
  mount --bind /run/edgekit/root /root
fi
if [ -f /config/wifi.conf ] && command -v wpa_supplicant >/dev/null; then
  wpa_supplicant -B -i wlan0 -c /config/wifi.conf >/dev/null 2>&1 || log "wifi: wpa_supplicant did not start"
fi

ip link set lo up
while read -r kind iface; do
  [ "$kind" = dhcp ] || continue
  ip link set "$iface" up
  udhcpc -b -S -i "$iface" -s /etc/edgekit/udhcpc.script -x "hostname:$hostname" >/dev/null 2>&1
done < /etc/edgekit/network

. /etc/os-release
log "$PRETTY_NAME, slot $(cmdline_arg edgekit.slot | tr AB ab)"
cat /etc/edgekit/marker > /dev/console
`;

const RC_SHUTDOWN = `#!/bin/sh
. /etc/edgekit/lib.sh
sync
umount /data 2>/dev/null
umount /config 2>/dev/null
`;

const SERVICE_SH = `#!/bin/sh
# Runs one service in the foreground under busybox init's respawn (supervision without a daemon).
. /etc/edgekit/lib.sh
f=/etc/edgekit/services/$1
user=$(sed -n 's/^user=//p' "$f")
command=$(sed -n 's/^command=//p' "$f")
# A service that dies at once must not spin the CPU: init respawns it after this pause.
sleep 1
if [ "$user" = root ]; then exec sh -c "$command"; fi
exec su -s /bin/sh -c "$command" "$user"
`;

const UDHCPC_SCRIPT = `#!/bin/sh
# udhcpc hook: apply the lease (address, router, DNS) with busybox ip.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/\${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      ip -4 route del default dev "$interface" 2>/dev/null
      for r in $router; do ip -4 route add default via "$r" dev "$interface"; break; done
    fi
    : > /run/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /run/resolv.conf; done
    echo "edgekit: $interface has $ip" > /dev/console
    ;;
esac
exit 0
`;
