#!/usr/bin/env bash
# Builds what the Linux guest needs: vpm.ko (against the cached guest kernel), the static test
# programs, and two initramfs images: busybox + both + an init that runs `vpmprog` (default
# vpmtest) with the `vpmtest=` arguments of the kernel command line, unloads the module and powers
# off; the second image adds Debian's fio and pv-libpmem's libpmem.so.1 for `vpmprog=fio` (fio's
# dev-dax engine on /dev/vpm; `vpmtest=hold` keeps the guest running afterwards, for crash tests).
# Both images hold e2fsprogs (mkfs.ext4, fsck.ext4) and fsyncer for filesystem jobs on a vPM
# block device (guest-driver/vpmfs.sh): `vpmdev=DEV vpmfs=dax|plain vpmrun=STEP,...` (and
# `vpmmod=0` to boot without vpm.ko, e.g. full virtualization on /dev/pmem0).
# Prints:
#   VPM_KO=... VPMTEST=... INITRAMFS=... INITRAMFS_FIO=... KERNEL_BZIMAGE=...
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../tests/setup/env.sh"
eval "$(bash "$here/kernel/build-kernel.sh" --print)"
out=${VPM_GUEST_OUT:-$VPM_REPO/target/guest}
mkdir -p "$out"

make -s -C "$KERNEL_BUILD_DIR" M="$here/vpm" LLVM=-19 modules >&2
cp "$here/vpm/vpm.ko" "$out/vpm.ko"
gcc -static -O2 -Wall -Werror -I "$here/include" -o "$out/vpmtest" "$here/tests/vpmtest.c"
gcc -static -O2 -Wall -Werror -o "$out/fsyncer" "$here/tests/fsyncer.c"
# pmemtest: a libpmem program linked statically with pv-libpmem (PV persistence on /dev/vpm).
pvlib=$(bash "$VPM_REPO/pv-libpmem/build-so.sh" "$out/pv-libpmem")
gcc -static -O2 -Wall -Werror -I "$pvlib/include" -o "$out/pmemtest" "$here/tests/pmemtest.c" \
  "$VPM_REPO/target/pv-libpmem-build/release/libpv_libpmem.a" -lpthread -ldl -lm 2>&1 | grep -v 'statically linked' >&2 || true
[ -x "$out/pmemtest" ] || { echo "linking pmemtest failed" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,proc,sys,dev,tmp,mnt,etc,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for a in sh mount umount insmod rmmod cat grep sed poweroff reboot sleep dmesg echo tail tr rm \
  mkdir ls sync kill wc head; do ln -s busybox "$root/bin/$a"; done
cp "$out/vpm.ko" "$root/lib/modules/"
cp "$out/vpmtest" "$out/pmemtest" "$out/fsyncer" "$root/bin/"
install -m 755 "$here/vpmfs.sh" "$root/bin/vpmfs"
install -m 0755 "$here/tests/blktest.sh" "$root/bin/blktest"
# e2fsprogs with the libraries they link (mkfs.ext4 and fsck.ext4 are mke2fs and e2fsck).
ln -s /proc/mounts "$root/etc/mtab"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
for prog in mke2fs e2fsck; do
  bin=$(command -v "$prog" || echo "/usr/sbin/$prog")
  [ -x "$bin" ] || { echo "$prog is missing (apt-get install e2fsprogs)" >&2; exit 1; }
  cp "$bin" "$root/bin/$prog"
  for lib in $(ldd "$bin" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }'); do
    [ -f "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
ln -s mke2fs "$root/bin/mkfs.ext4"
ln -s e2fsck "$root/bin/fsck.ext4"
cat >"$root/init" <<'EOI'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
args=$(sed -n 's/.*vpmtest=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' ')
prog=$(sed -n 's/.*vpmprog=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "VPM-INIT args=$args"
port=$(sed -n 's/.*vpmport=\([^ ]*\).*/\1/p' /proc/cmdline)
mod=$(sed -n 's/.*vpmmod=\([^ ]*\).*/\1/p' /proc/cmdline)
fs=$(sed -n 's/.*vpmfs=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ "$mod" = 0 ]; then
  echo "VPM-INIT without vpm.ko"
  [ -n "$fs" ] && /bin/vpmfs
elif insmod /lib/modules/vpm.ko ${port:+doorbell_port=$port}; then
  if [ -n "$fs" ]; then
    /bin/vpmfs
  elif [ "$prog" = fio ]; then
    # Debian's fio, unmodified, on pv-libpmem: 4 KiB pmem_memcpy_persist writes of a known
    # pattern into the first 8 MiB of vPM, read back and verified.
    LD_LIBRARY_PATH=/usr/lib/pv-libpmem /usr/bin/fio --thread --name=vpm --ioengine=dev-dax \
      --filename=/dev/vpm --size=8M --bs=4k --rw=write --iodepth=1 --direct=0 \
      --buffer_pattern=0x5a5a5a5a --scramble_buffers=0 --verify=pattern \
      --verify_pattern=0x5a5a5a5a --output-format=terse >/tmp/fio.out 2>&1
    echo "FIO rc=$?"
    grep -v '^3;' /tmp/fio.out | head -5
    echo "VPM-STATS $(tr '\n' ' ' </sys/kernel/debug/vpm/stats)"
    if [ "$args" = hold ]; then echo "FIO holding"; sleep 100000; fi
  else
    /bin/${prog:-vpmtest} $args
  fi
  echo "VPM-STATS $(tr '\n' ' ' </sys/kernel/debug/vpm/stats)"
  rmmod vpm && echo "VPM-RMMOD ok"
else
  echo "VPM-INSMOD failed"
fi
dmesg | grep -i vpm | tail -5
echo "VPM-INIT done"
reboot -f
EOI
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initramfs.cpio.gz")

# The second image: Debian's fio with the libraries it links, and pv-libpmem's libpmem.so.1 in a
# directory of its own (LD_LIBRARY_PATH picks it over Debian's).
mkdir -p "$root/usr/lib/pv-libpmem" "$root/usr/bin"
cp -L "$pvlib/lib/libpmem.so.1" "$root/usr/lib/pv-libpmem/"
fio_bin=$(command -v fio) || { echo "fio is missing (run tests/setup/install-deps.sh)" >&2; exit 1; }
cp "$fio_bin" "$root/usr/bin/fio"
for lib in $(ldd "$fio_bin" | awk '/=>/ { print $3 } /ld-linux/ { print $1 }'); do
  [ -f "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initramfs-fio.cpio.gz")

echo "INITRAMFS_FIO=$out/initramfs-fio.cpio.gz"
echo "VPM_KO=$out/vpm.ko"
echo "VPMTEST=$out/vpmtest"
echo "INITRAMFS=$out/initramfs.cpio.gz"
echo "KERNEL_BZIMAGE=$KERNEL_BZIMAGE"
