#!/bin/sh
# blktest: exercises /dev/vpmblk0 inside the guest (busybox sh; mkfs.ext4/e2fsck and fio from
# Debian where the image has them).
#   blktest raw     1 MiB written at 4 MiB with conv=fsync: the flush persists exactly those
#                   pages; read back after dropping the page cache
#   blktest ext4    mkfs.ext4, mount, a 1 MiB file written and fsynced (bytes persisted by that
#                   fsync printed), remount, read back, e2fsck -fn clean
#   blktest fio     fio --verify=crc32c random 4 KiB writes with an fsync every 32, on the disk
#   blktest discard 1 MiB at 4 MiB and at 8 MiB written and fsynced, 8..9 MiB discarded, 8.5..9 MiB
#                   rewritten and fsynced; "DISCARD a=<md5> c=<md5>" of the two data sets
#   blktest discardcheck  (next boot) "REGION name md5" of 4..5, 8..8.5 and 8.5..9 MiB, and of
#                   512 KiB of zeros
#   blktest refused a flush whose FLUSH entry the host refuses (injected through the driver's
#                   debugfs) fails the fsync with EIO; the next fsync persists the whole disk
#                   (every page was marked again) and succeeds
#   blktest writer TAG mkfs|keep  (crash trials) with mkfs: mkfs.ext4 (discarding the disk)
#                   first; mount -o discard; files TAG-1, TAG-2, ... of 4-64 KiB of random data,
#                   each written with conv=fsync and its directory fsynced, then
#                   "ACKED i TAG-i <md5>"; meanwhile another writer rewrites a file and never
#                   syncs. VPM_BLK_ACK_BEFORE_FSYNC=1 in the environment (kernel command line)
#                   makes it a broken writer that acknowledges before the fsync, which the crash
#                   trials must catch.
#   blktest check [PRUNE]  after a host crash: mount (journal replay), "FILE name <md5>" for
#                   every file but the unsynced one, removes the files PRUNE-* (old trials, to
#                   keep the disk from filling) and prints "PRUNED PRUNE", unmount, "FSCK rc=N"
#                   of e2fsck -fn
# Prints "BLK-FLUSH mode=M written=W persisted=P" per measured fsync, "BLKTEST <mode> OK" or
# "BLKTEST FAIL <why>".
/bin/busybox --install -s 2>/dev/null
mode=${1:-raw}
dev=/dev/vpmblk0
fails=0

fail() {
  echo "BLKTEST FAIL $*"
  fails=$((fails + 1))
}

stat_of() {
  sed -n "s/^$1 //p" /sys/kernel/debug/vpm/stats
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

[ -b "$dev" ] || { echo "BLKTEST FAIL no $dev"; exit 1; }
echo "vpmblk0: $(cat /sys/block/vpmblk0/size) sectors, logical block $(cat /sys/block/vpmblk0/queue/logical_block_size), cache $(cat /sys/block/vpmblk0/queue/write_cache), fua $(cat /sys/block/vpmblk0/queue/fua)"

# The crash trials parse the console: only emergencies from the kernel on it meanwhile.
case "$mode" in writer | check) echo 1 >/proc/sys/kernel/printk ;; esac

case "$mode" in
raw)
  dd if=/dev/urandom of=/tmp/data bs=4096 count=256 2>/dev/null
  want=$(md5sum </tmp/data | cut -d' ' -f1)
  before=$(stat_of blk_flush_bytes)
  dd if=/tmp/data of=$dev bs=4096 seek=1024 count=256 conv=fsync 2>/dev/null || fail "dd write"
  after=$(stat_of blk_flush_bytes)
  echo "BLK-FLUSH mode=raw written=1048576 persisted=$((after - before))"
  drop_caches
  got=$(dd if=$dev bs=4096 skip=1024 count=256 2>/dev/null | md5sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "read back $got, want $want"
  ;;
ext4)
  mkfs.ext4 -q -F -b 4096 -E nodiscard $dev || fail "mkfs.ext4"
  mkdir -p /mnt
  mount -t ext4 $dev /mnt || fail "mount"
  sync
  dd if=/dev/urandom of=/tmp/data bs=4096 count=256 2>/dev/null
  want=$(md5sum </tmp/data | cut -d' ' -f1)
  before=$(stat_of blk_flush_bytes)
  fua_before=$(stat_of blk_fua_bytes)
  dd if=/tmp/data of=/mnt/file bs=4096 conv=fsync 2>/dev/null || fail "write+fsync"
  after=$(stat_of blk_flush_bytes)
  fua_after=$(stat_of blk_fua_bytes)
  echo "BLK-FLUSH mode=ext4 written=1048576 persisted=$((after - before + fua_after - fua_before))"
  umount /mnt || fail "umount"
  drop_caches
  mount -t ext4 $dev /mnt || fail "remount"
  got=$(md5sum </mnt/file | cut -d' ' -f1)
  [ "$got" = "$want" ] || fail "read back $got, want $want"
  umount /mnt
  e2fsck -fn $dev >/tmp/fsck.out 2>&1 || { fail "e2fsck"; cat /tmp/fsck.out; }
  ;;
fio)
  fio --name=vpmblk --filename=$dev --ioengine=psync --direct=1 --rw=randwrite --bs=4k \
    --size=16M --fsync=32 --end_fsync=1 --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --randrepeat=1 --output-format=terse >/tmp/fio.out 2>&1
  rc=$?
  echo "FIO rc=$rc"
  [ $rc = 0 ] || { fail "fio"; cat /tmp/fio.out; }
  echo "BLK-FLUSH mode=fio written=16777216 persisted=$(stat_of blk_flush_bytes) last=$(stat_of blk_last_flush_bytes)"
  ;;
discard)
  dd if=/dev/urandom of=/tmp/a bs=4096 count=256 2>/dev/null
  dd if=/dev/urandom of=/tmp/c bs=4096 count=128 2>/dev/null
  dd if=/tmp/a of=$dev bs=4096 seek=1024 conv=fsync 2>/dev/null || fail "write a"
  dd if=/tmp/a of=$dev bs=4096 seek=2048 conv=fsync 2>/dev/null || fail "write b"
  blkdiscard -o 8388608 -l 1048576 $dev || fail "blkdiscard"
  dd if=/tmp/c of=$dev bs=4096 seek=2176 conv=fsync 2>/dev/null || fail "write c"
  echo "DISCARD a=$(md5sum </tmp/a | cut -d' ' -f1) c=$(md5sum </tmp/c | cut -d' ' -f1)"
  ;;
discardcheck)
  for r in a:1024:256 discarded:2048:128 c:2176:128; do
    IFS=: read name at n <<EOF2
$r
EOF2
    echo "REGION $name $(dd if=$dev bs=4096 skip=$at count=$n 2>/dev/null | md5sum | cut -d' ' -f1)"
  done
  echo "REGION zeros $(dd if=/dev/zero bs=4096 count=128 2>/dev/null | md5sum | cut -d' ' -f1)"
  ;;
refused)
  dd if=/dev/urandom of=/tmp/data bs=4096 count=16 2>/dev/null
  echo 1 >/sys/kernel/debug/vpm/inject_refused_flushes || fail "inject"
  if dd if=/tmp/data of=$dev bs=4096 seek=100 count=16 conv=fsync 2>/tmp/dd.err; then
    fail "the fsync succeeded although the host refused its flush"
  fi
  echo "refused fsync: $(cat /tmp/dd.err)"
  [ "$(stat_of blk_errors)" -ge 1 ] || fail "no block error counted"
  dd if=/tmp/data of=$dev bs=4096 seek=200 count=1 conv=fsync 2>/dev/null || fail "the retry failed"
  echo "BLK-FLUSH mode=refused persisted=$(stat_of blk_last_flush_bytes)"
  ;;
writer)
  # mkfs discards the whole disk (every page transient on the host, durably) and -o discard
  # discards freed blocks: every page persisted later, in this boot or a later one, must go
  # through SET_PERSISTENT first.
  tag=${2:-f}
  if [ "${3:-mkfs}" = mkfs ]; then mkfs.ext4 -q -F -b 4096 $dev || fail "mkfs.ext4"; fi
  mkdir -p /mnt
  mount -t ext4 -o discard $dev /mnt || fail "mount"
  (while :; do dd if=/dev/urandom of=/mnt/unsynced bs=4096 count=32 2>/dev/null; done) &
  early=${VPM_BLK_ACK_BEFORE_FSYNC:-0}
  [ "$early" = 1 ] && echo "WRITER acknowledges before fsync (VPM_BLK_ACK_BEFORE_FSYNC=1)"
  i=0
  while [ $fails = 0 ]; do
    i=$((i + 1))
    f=$tag-$i
    dd if=/dev/urandom of=/tmp/d bs=4096 count=$((i * 7 % 16 + 1)) 2>/dev/null
    sum=$(md5sum </tmp/d | cut -d' ' -f1)
    if [ "$early" = 1 ]; then
      dd if=/tmp/d of=/mnt/$f bs=4096 2>/dev/null || fail "write $f"
      echo "ACKED $i $f $sum"
      sync /mnt/$f /mnt || fail "fsync $f"
    else
      dd if=/tmp/d of=/mnt/$f bs=4096 conv=fsync 2>/dev/null || fail "write $f"
      sync /mnt || fail "fsync /mnt"
      [ $fails = 0 ] && echo "ACKED $i $f $sum"
    fi
  done
  ;;
check)
  mkdir -p /mnt
  if mount -t ext4 $dev /mnt; then
    for f in /mnt/*; do
      [ -f "$f" ] && [ "$f" != /mnt/unsynced ] && echo "FILE ${f#/mnt/} $(md5sum <"$f" | cut -d' ' -f1)"
    done
    if [ -n "$2" ]; then
      rm -f /mnt/"$2"-* && sync && echo "PRUNED $2"
    fi
    umount /mnt || fail "umount"
  else
    fail "mount after the crash"
  fi
  e2fsck -fn $dev >/tmp/fsck.out 2>&1
  rc=$?
  echo "FSCK rc=$rc"
  [ $rc = 0 ] || { fail "e2fsck"; cat /tmp/fsck.out; }
  ;;
*)
  fail "unknown mode $mode"
  ;;
esac
echo "VPM-STATS $(tr '\n' ' ' </sys/kernel/debug/vpm/stats)"
if [ $fails = 0 ]; then echo "BLKTEST $mode OK"; else echo "BLKTEST $mode FAILED"; fi
