#!/usr/bin/env bash
# The Linux-guest job: a real Linux 7.3 guest under QEMU (TCG on these machines) on vPM, served by
# `vpm qemu`, in the two ways an unmodified Linux user gets it:
#   1. full virtualization: no vpm.ko, ext4 -o dax on /dev/pmem0, periodic epochs (100 ms); the
#      guest runs an fsync-heavy workload, QEMU and the host service are killed with SIGKILL, a fresh
#      boot on the recovered pool runs fsck and checks every file acknowledged before the last
#      epoch the host witnessed (the console and the epoch witness are kept outside the pool);
#   2. the vPM block device: vpm.ko's /dev/vpmblk0 with ext4, where each fsync makes durable only
#      the pages written since the previous one (the host's bytes per flush are shown).
# Sets the machine up first (idempotent). Exits non-zero if any check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/setup/env.sh
bash tests/setup/install-deps.sh
eval "$(bash guest-driver/kernel/build-kernel.sh)"
cargo build --release --quiet -p vpm-host --bin vpm
eval "$(bash guest-driver/build-guest.sh)"
vpm="${CARGO_TARGET_DIR:-target}/release/vpm"
dir=$(mktemp -d /dev/shm/vpm-linux.XXXXXX)
trap 'rm -rf "$dir"' EXIT

say() { printf '\n==> %s\n' "$*"; }
qemu() { # MODE VM APPEND [extra vpm args...]
  local mode=$1 vm=$2 append=$3
  shift 3
  "$vpm" qemu --state "$dir/state" --pool-mib 160 --vm "$vm" --vpm-mib 64 --mode "$mode" \
    --timeout 180 --kernel "$KERNEL_BZIMAGE" --initrd "$INITRAMFS" \
    --append "loglevel=1 $append" "$@"
}

say "1. full virtualization: ext4 -o dax on /dev/pmem0, no vpm.ko, 100 ms epochs"
fv="vpmmod=0 vpmdev=/dev/pmem0 vpmfs=dax vpmtag=a"
setsid "$vpm" qemu --state "$dir/state" --pool-mib 160 --vm fv --vpm-mib 64 --mode full --epoch-ms 100 \
  --fresh --timeout 180 --epoch-witness "$dir/epochs" --kernel "$KERNEL_BZIMAGE" \
  --initrd "$INITRAMFS" --append "loglevel=1 $fv vpmrun=mkfs,work" >"$dir/run.out" 2>&1 &
pid=$!
for _ in $(seq 1200); do
  n=$(grep -c '^FSYNC-ACK' "$dir/state/fv.console" 2>/dev/null || true)
  [ "${n:-0}" -ge 200 ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$dir/run.out"; echo "vpm qemu ended early" >&2; exit 1; }
  sleep 0.1
done
kill -KILL -- "-$pid"
wait "$pid" 2>/dev/null || true
cp "$dir/state/fv.console" "$dir/crashed.console"
acked=$(grep -c '^FSYNC-ACK' "$dir/crashed.console" || true)
[ -s "$dir/epochs" ] || { cat "$dir/run.out"; echo "no epoch was witnessed before the kill" >&2; exit 1; }
read -r last_epoch witnessed_bytes < <(tail -n 1 "$dir/epochs")
head -c "$witnessed_bytes" "$dir/crashed.console" | grep '^FSYNC-ACK' |
  awk '{ print $2, $3, $4 }' | sort >"$dir/expected"
echo "killed QEMU and the host (SIGKILL) after $acked acknowledged fsyncs;" \
  "the last epoch the host witnessed is $last_epoch, with $(wc -l <"$dir/expected") of them before it"

say "   a fresh boot on the recovered pool: fsck, then every file acknowledged before that epoch"
qemu full fv "$fv vpmrun=check" --epoch-ms 100 >"$dir/check.out" 2>&1
grep -E '^VPMFS fsck rc=' "$dir/check.out"
grep '^FILE ' "$dir/check.out" | awk '{ print $2, $3, $4 }' | sort >"$dir/found"
missing=$(comm -23 "$dir/expected" "$dir/found" | wc -l)
echo "files present with their checksum: $(comm -12 "$dir/expected" "$dir/found" | wc -l);" \
  "missing or different: $missing"
grep -q '^VPMFS fsck rc=0' "$dir/check.out" || { echo "fsck is not clean" >&2; exit 1; }
[ "$missing" -eq 0 ] || { echo "acknowledged files were lost" >&2; exit 1; }
recovered=$(grep -o '"start_epoch":[0-9]*' "$dir/check.out" | tail -n 1 | cut -d: -f2)
echo "recovered to epoch ${recovered:-?} (the witness's last: $last_epoch)"
[ "${recovered:-0}" -ge "$last_epoch" ] || { echo "recovered to an older epoch" >&2; exit 1; }

say "2. the vPM block device: ext4 on /dev/vpmblk0 (vpm.ko), 100 fsync-ing operations"
qemu pv blk "vpmdev=/dev/vpmblk0 vpmfs=plain vpmtag=b vpmrun=mkfs,bench vpmbench=100" --fresh \
  >"$dir/blk.out" 2>&1
grep -E '^FSYNCER bench|^VPMFS bench done' "$dir/blk.out"
counter() { sed -n "s/.*VPMFS stats-$1 .*\\b$2 \\([0-9]*\\).*/\\1/p" "$dir/blk.out" | tail -n 1; }
flushes=$(($(counter after blk_flushes) - $(counter before blk_flushes)))
bytes=$(($(counter after blk_flush_bytes) - $(counter before blk_flush_bytes)))
[ "$flushes" -gt 0 ] || { cat "$dir/blk.out"; echo "no flushes reached the host" >&2; exit 1; }
echo "flushes: $flushes; bytes the host made durable: $bytes ($((bytes / flushes)) per flush," \
  "of a 64 MiB disk)"
grep -q '^VPMFS bench done' "$dir/blk.out" || { echo "the block-device run failed" >&2; exit 1; }
say "Linux guest job passed"
