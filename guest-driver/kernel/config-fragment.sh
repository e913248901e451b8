#!/bin/sh
# Kernel options for the VPM guest, applied after `make tinyconfig` and before `make olddefconfig`.
# Run from the kernel build directory. Every option here is checked to be `=y` afterwards.
set -e
C=scripts/config
# SCHEDSTATS: without it `struct sched_statistics` is empty but cacheline-aligned, and bindgen lays
# the empty struct out without that alignment: Rust's `task_struct` then puts every field after
# `stats` 48 bytes early (`mm` among them, so `current!().mm()` reads the wrong field).
# SMP: QEMU `-smp N` (vpm qemu --smp) brings up N CPUs, enumerated from SeaBIOS's MP table
# (X86_MPPARSE, on by default without ACPI) through the local APIC; NR_CPUS keeps per-CPU areas small.
ENABLE="
64BIT
PRINTK PRINTK_TIME EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE
BLK_DEV_INITRD RD_GZIP DEVTMPFS DEVTMPFS_MOUNT PROC_FS SYSFS SHMEM TMPFS
BINFMT_ELF BINFMT_SCRIPT MULTIUSER FUTEX UNIX NET SYSVIPC
TIMERFD EVENTFD EPOLL SIGNALFD POSIX_TIMERS AIO ADVISE_SYSCALLS
MODULES MODULE_UNLOAD RUST
HYPERVISOR_GUEST PARAVIRT KVM_GUEST
BLOCK BLK_DEV SPARSEMEM_VMEMMAP MEMORY_HOTPLUG MEMORY_HOTREMOVE TRANSPARENT_HUGEPAGE ZONE_DEVICE
LIBNVDIMM BLK_DEV_PMEM X86_PMEM_LEGACY DAX FS_DAX DEV_DAX DEV_DAX_PMEM EXT4_FS
PCI VIRTIO_MENU VIRTIO VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_PCI VIRTIO_PMEM VIRTIO_BLK
DEBUG_FS SCHEDSTATS
SMP X86_LOCAL_APIC X86_IO_APIC X86_MPPARSE
"
DISABLE="MODVERSIONS"
for opt in $ENABLE; do $C --enable "$opt"; done
for opt in $DISABLE; do $C --disable "$opt"; done
$C --set-val NR_CPUS 8
# Exported so build-kernel.sh can verify the result after olddefconfig.
echo "$ENABLE" | tr ' ' '\n' | grep -v '^$' > .vpm-required-options
