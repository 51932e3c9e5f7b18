#!/bin/sh
# Reads every range of a .bmap back from a target with dd iflag=direct (no page cache) and checks
# its sha256: the read-back step that bmaptool itself does not do. Usage: direct-readback.sh BMAP TARGET
set -eu
bmap=$1 target=$2
sed -n 's/.*<Range chksum="\([0-9a-f]*\)"> *\([0-9]*\)-\{0,1\}\([0-9]*\) *<\/Range>.*/\1 \2 \3/p' "$bmap" |
while read -r sum first last; do
  [ -n "$last" ] || last=$first
  got=$(dd if="$target" iflag=direct,skip_bytes,count_bytes bs=4M skip=$((first * 4096)) count=$(((last - first + 1) * 4096)) status=none | sha256sum)
  [ "${got%% *}" = "$sum" ] || { echo "direct-readback: $target: blocks $first-$last differ" >&2; exit 1; }
done
