/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/* The /dev/vpm user interface; mirrors abi/src/proto/uapi.rs (a test checks they agree). */
#ifndef VPM_IOCTL_H
#define VPM_IOCTL_H
#include <stdint.h>
#include <sys/ioctl.h>

struct vpm_range {
	uint64_t addr; /* user virtual address inside a /dev/vpm mapping */
	uint64_t len;
};

struct vpm_info {
	uint64_t vpm_base;
	uint64_t vpm_size;
	uint32_t features;
	uint32_t abi_version;
	uint64_t epoch;
	uint64_t served;
	uint64_t rejected;
};

/* mmap offset of the read-only status page (one page, struct vpm_status); vPM starts at 0. */
#define VPM_STATUS_OFFSET (1ULL << 44)
#define VPM_STATUS_MAGIC 0x31544154534d5056ULL /* "VPMSTAT1" little-endian */

struct vpm_status {
	uint64_t magic;
	uint64_t map_generation; /* bumped by every mmap of vPM */
};

#define VPM_IOC_INFO _IOR('V', 1, struct vpm_info)
#define VPM_IOC_PERSIST _IOW('V', 2, struct vpm_range)
#define VPM_IOC_FLUSH _IOW('V', 3, struct vpm_range)
#define VPM_IOC_DRAIN _IO('V', 4)
#define VPM_IOC_SET_TRANSIENT _IOW('V', 5, struct vpm_range)
#define VPM_IOC_SET_PERSISTENT _IOW('V', 6, struct vpm_range)
#define VPM_IOC_REQUEST_EPOCH _IO('V', 7)

#endif
