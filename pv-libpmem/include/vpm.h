/* SPDX-License-Identifier: BSD-3-Clause OR MIT */
/* vpm.h -- pv-libpmem's VPM extensions (symbol version VPM_1.0). */
#ifndef VPM_H
#define VPM_H 1
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
/* 1 if [addr, addr+len) lies in a /dev/vpm mapping (para-virtual persistence), else 0. */
int pmem_vpm_active(const void *addr, size_t len);
/* Marks whole pages transient: DRAM only, zero after a host crash. 0 or -1 with errno. */
int pmem_vpm_set_transient(void *addr, size_t len);
/* Marks whole pages persistent again. 0 or -1 with errno. */
int pmem_vpm_set_persistent(void *addr, size_t len);
/* Asks the host to commit an epoch. 0 or -1 with errno (ENODEV without /dev/vpm). */
int pmem_vpm_request_epoch(void);
#ifdef __cplusplus
}
#endif
#endif
