#!/bin/sh
# vpmfs: filesystem jobs of the guest's init on a vPM block device, from the kernel command line:
#   vpmdev=DEV       the device (default /dev/pmem0; /dev/vpmblk0 for the vPM block device)
#   vpmfs=dax|plain  mount ext4 with -o dax, or without
#   vpmtag=T         the workload's tag (file names T-0, T-1, ...)
#   vpmrun=S,S,...   steps, in order:
#     mkfs    mkfs.ext4 (4 KiB blocks), mount, make /mnt/f, sync, unmount
#     check   mount and unmount (replays the journal after a crash), `fsck.ext4 -fn` (prints
#             "VPMFS fsck rc=N"), mount and list every file with its length and crc32
#             (fsyncer check), then remove them
#     work    mount, start `fsyncer nosync` and `fsyncer run` (one line per acknowledged fsync) and
#             wait for ever (crash trials kill the host)
#     short   as work, for a few seconds, then unmount (a clean end)
#     bench   mount, `fsyncer bench` with vpmbench=N operations (default 100), unmount; prints
#             the vpm.ko counters before and after when the module is loaded (VPMFS stats-*)
# Output lines start with VPMFS (and fsyncer's FSYNC-ACK, FILE, FSYNCER).
arg() { sed -n "s/.*$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
dev=$(arg vpmdev)
dev=${dev:-/dev/pmem0}
fs=$(arg vpmfs)
tag=$(arg vpmtag)
tag=${tag:-t}
opt=
[ "$fs" = dax ] && opt="-o dax"

mnt() {
  # shellcheck disable=SC2086
  if mount -t ext4 $opt "$dev" /mnt; then return 0; fi
  echo "VPMFS mount failed"
  return 1
}

# vpm.ko's counters on one line (nothing without the module).
vpmstats() {
  [ -r /sys/kernel/debug/vpm/stats ] && tr '\n' ' ' </sys/kernel/debug/vpm/stats
}

work() {
  mnt || return 1
  mkdir -p /mnt/f
  /bin/fsyncer nosync /mnt/f "$tag" &
  nosync=$!
  /bin/fsyncer run /mnt/f "$tag" &
  run=$!
  if [ "$1" = short ]; then
    sleep 5
    kill "$run" "$nosync"
    wait
    umount /mnt && echo "VPMFS short done"
  else
    wait
  fi
}

echo "VPMFS dev=$dev fs=$fs tag=$tag"
for step in $(arg vpmrun | tr ',' ' '); do
  case $step in
  mkfs)
    mkfs.ext4 -q -F -b 4096 "$dev" && mnt && mkdir -p /mnt/f && sync && umount /mnt &&
      echo "VPMFS mkfs ok"
    ;;
  check)
    mnt && umount /mnt
    fsck.ext4 -fn "$dev" >/tmp/fsck.out 2>&1
    echo "VPMFS fsck rc=$?"
    sed 's/^/VPMFS fsck: /' /tmp/fsck.out | tail -20
    if mnt; then
      /bin/fsyncer check /mnt/f
      rm -f /mnt/f/*
      sync
      umount /mnt
    fi
    ;;
  work | short) work "$step" ;;
  bench)
    n=$(arg vpmbench)
    mnt && mkdir -p /mnt/f && sync &&
      echo "VPMFS stats-before $(vpmstats)" &&
      /bin/fsyncer bench /mnt/f "$tag" "${n:-100}" &&
      echo "VPMFS stats-after $(vpmstats)" &&
      umount /mnt && echo "VPMFS bench done"
    ;;
  *) echo "VPMFS unknown step $step" ;;
  esac
done
echo "VPMFS done"
