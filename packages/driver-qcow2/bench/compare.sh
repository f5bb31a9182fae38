#!/bin/sh
# Benchmarks against qemu-img bench / convert on the same files, in the same run; best of 3 each.
# Usage: bench/compare.sh [dir]
set -e
cd "$(dirname "$0")/.."
D=${1:-/tmp/qcow2-bench}
mkdir -p "$D"
ours() { node --conditions=@blockgraph/source --import tsx bench/bench.mts "$@"; }
qemu() { /usr/bin/time -f %e qemu-img bench -q -f qcow2 "$@" 2>&1 | tail -1; }
best() { printf '%s\n' "$@" | sort -n | head -1; }
run() { # name mode count depth size step
  name=$1; mode=$2; count=$3; depth=$4; size=$5; step=$6
  qs=""; os=""
  for i in 1 2 3; do
    if [ "$mode" = write ]; then
      qemu-img create -q -f qcow2 "$D/q.qcow2" 8G; qs="$qs $(qemu -w -c "$count" -d "$depth" -s "$size" -S "$step" "$D/q.qcow2")"
      qemu-img create -q -f qcow2 "$D/o.qcow2" 8G; os="$os $(ours "$D/o.qcow2" write "$count" "$depth" "$size" "$step")"
    else
      qs="$qs $(qemu -c "$count" -d "$depth" -s "$size" -S "$step" "$D/r.qcow2")"
      os="$os $(ours "$D/r.qcow2" read "$count" "$depth" "$size" "$step")"
    fi
  done
  qt=$(best $qs); ot=$(best $os)
  echo "$name: qemu ${qt}s, blockgraph ${ot}s, speed $(echo "scale=2; $qt / $ot" | bc)x QEMU"
}
qemu-img create -q -f qcow2 "$D/r.qcow2" 1G
qemu-io -c 'write -q -P 0x5a 0 1G' "$D/r.qcow2"
run "4k allocating writes, QD32, step 64k" write 50000 32 4096 65536
run "4k reads, QD32" read 200000 32 4096 4096
run "1M sequential writes, QD4" write 3000 4 1048576 1048576
run "1M sequential reads, QD4" read 20000 4 1048576 1048576
qemu-img create -q -f qcow2 "$D/half.qcow2" 1G
qemu-io -c 'write -q -P 1 0 256M' -c 'write -q -P 2 512M 256M' "$D/half.qcow2"
qs=""; os=""
for i in 1 2 3; do
  rm -f "$D/c1.qcow2" "$D/c2.qcow2"
  qs="$qs $(/usr/bin/time -f %e qemu-img convert -f qcow2 -O qcow2 "$D/half.qcow2" "$D/c1.qcow2" 2>&1 | tail -1)"
  os="$os $(node --conditions=@blockgraph/source --import tsx bench/convert.mts "$D/half.qcow2" "$D/c2.qcow2")"
done
qt=$(best $qs); ot=$(best $os)
echo "convert qcow2->qcow2, 1 GiB half data: qemu ${qt}s, blockgraph ${ot}s, time $(echo "scale=2; $ot / $qt" | bc)x QEMU's"
rm -f "$D"/*.qcow2 "$D"/*.raw
