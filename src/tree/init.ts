/**
 * /init, the first program the kernel runs from the initramfs.
 *
 * Root in RAM: the initramfs is the whole system; /init hands over to busybox init.
 * Root on disk: the initramfs is a small first stage. It maps the slot's root partition through
 * dm-verity with the root hash from the kernel command line (which the slot's boot entry carries),
 * so every block is checked against the signed hash as it is read, then switches to it. A root
 * that fails to map or mount makes /init exit: the kernel panics, reboots (panic=N), and the boot
 * chain counts a failed try of that slot.
 */
export const INIT_RAM = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin
exec /usr/sbin/init
`;

export const INIT_DISK = `#!/bin/sh
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /etc/edgekit/lib.sh
load_modules /etc/edgekit/modules

# U-Boot's A/B script names slots A and B; partitions and boot entries use a and b.
slot=$(cmdline_arg edgekit.slot | tr AB ab)
[ -n "$slot" ] || { log "no edgekit.slot= on the command line"; exit 1; }
verity=$(cmdline_arg edgekit.verity) || { log "no edgekit.verity= on the command line"; exit 1; }
# edgekit.verity=<root hash>:<salt>:<data blocks>:<hash start block>
IFS=: read -r roothash salt blocks hashstart <<EOV
$verity
EOV
dev=$(partition_dev "system-$slot") || { log "partition system-$slot not found"; exit 1; }
table="0 $((blocks * 8)) verity 1 $dev $dev 4096 4096 $blocks $hashstart sha256 $roothash $salt"
dmsetup create --readonly --noudevsync --noudevrules edgekit-root --table "$table" || { log "dm-verity setup of $dev failed"; exit 1; }
# No udev here: ask dmsetup for the /dev/mapper node itself.
dmsetup mknodes edgekit-root 2>/dev/null
mkdir -p /newroot
rootdev=/dev/mapper/edgekit-root
[ -b "$rootdev" ] || rootdev=/dev/dm-0
mount -t squashfs -o ro "$rootdev" /newroot || { log "cannot mount the root of slot $slot"; exit 1; }
[ -x /newroot/usr/sbin/init ] || { log "slot $slot has no /usr/sbin/init"; exit 1; }
log "root of slot $slot verified by dm-verity ($roothash)"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /usr/sbin/init
`;
