/* SPDX-License-Identifier: BSD-3-Clause OR MIT */
/* vpm.h -- pv-libpmem's VPM extensions (symbol versions VPM_1.0 and VPM_1.1). */
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
/* VPM_1.1: PV hints the host refused (quota, no space, stale mapping) that pv-libpmem made durable by
 * requesting an epoch instead, since the program started. */
unsigned long long pmem_vpm_refusals(void);
/* PV hints the host refused whose fallback epoch failed too: that data was NOT durable when the
 * call returned (pmem_errormsg() and errno said why; pmem_msync/pmem_deep_* returned -1). */
unsigned long long pmem_vpm_failures(void);
#ifdef __cplusplus
}
#endif
#endif
