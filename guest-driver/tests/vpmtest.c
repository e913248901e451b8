/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * vpmtest: exercises /dev/vpm inside the guest.
 *   vpmtest basic        persist, flush+drain, transient, epoch, and error cases with their errno
 *   vpmtest writer       sequence-numbered records, flushed, drained every 16; prints "ACKED n"
 *                        after each drain; the last 64 pages are transient scratch, rewritten
 *   vpmtest check N      after a host crash: every record <= N is intact, the scratch is zero
 *   vpmtest flood        flushes records, more than the ring holds, draining every 1024; stops
 *                        at the first error and prints "VPMTEST flood stopped: <errno>" (a host
 *                        that stops answering must give ETIMEDOUT, never a hang)
 *   vpmtest pattern N B  the first N bytes of vPM all hold byte B (what another program wrote)
 *   vpmtest refused      a FLUSH the host refuses (injected through the driver's debugfs) makes
 *                        the next DRAIN fail with the FLUSH's error, also when a persist rang the
 *                        doorbell in between; the drain after that succeeds again
 *   vpmtest migrate      (2 CPUs) FLUSH pinned to one CPU, DRAIN pinned to the other: with one
 *                        ring per CPU the DRAIN must still cover the FLUSH (a refused one fails
 *                        it), in both directions
 * Prints "VPMTEST <mode> OK" or "VPMTEST FAIL <why>".
 */
#define _GNU_SOURCE
#include "records.h"
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "vpm_ioctl.h"

#define PAGE 4096ULL
#define REC 64ULL
#define SCRATCH_PAGES 64ULL

static int fd;
static uint8_t *vpm;
static struct vpm_info info;
static int failures;

static void fail(const char *what, int got, int want)
{
	printf("VPMTEST FAIL %s: got %d (%s), want %d\n", what, got, got ? strerror(got) : "ok", want);
	failures++;
}

static int call(unsigned long cmd, void *addr, uint64_t len)
{
	struct vpm_range r = { .addr = (uint64_t)(uintptr_t)addr, .len = len };
	return ioctl(fd, cmd, &r) == 0 ? 0 : errno;
}

static void expect(const char *what, int got, int want)
{
	if (got != want)
		fail(what, got, want);
}

#define SALT 0

static uint64_t word(uint64_t seq, int i)
{
	return record_word(seq, i, SALT);
}

static uint64_t slots(void)
{
	return (info.vpm_size - SCRATCH_PAGES * PAGE) / REC;
}

static uint64_t map_generation(const volatile struct vpm_status *st)
{
	return __atomic_load_n(&st->map_generation, __ATOMIC_ACQUIRE);
}

/* Another descriptor's mapping, the status page, sysfs size, a mapping gone. */
static void mappings(void)
{
	const volatile struct vpm_status *st =
		mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, VPM_STATUS_OFFSET);
	if (st == MAP_FAILED) {
		fail("map the status page", errno, 0);
		return;
	}
	expect("status magic", st->magic == VPM_STATUS_MAGIC ? 0 : EINVAL, 0);
	void *rw = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, VPM_STATUS_OFFSET);
	expect("writable status page", rw == MAP_FAILED ? errno : 0, EACCES);
	uint64_t gen = map_generation(st);
	int fd2 = open("/dev/vpm", O_RDWR);
	uint8_t *other = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 4 * PAGE);
	if (fd2 < 0 || other == MAP_FAILED) {
		fail("second mapping", errno, 0);
		return;
	}
	expect("generation bumped", map_generation(st) > gen ? 0 : EINVAL, 0);
	memset(other, 0x33, 64);
	expect("persist through another descriptor's mapping", call(VPM_IOC_PERSIST, other, 64), 0);
	expect("same vPM", vpm[4 * PAGE] == 0x33 ? 0 : EINVAL, 0);
	expect("status page is not vPM", call(VPM_IOC_PERSIST, (void *)st, 64), EFAULT);
	munmap(other, 2 * PAGE);
	close(fd2);
	expect("unmapped range", call(VPM_IOC_PERSIST, other, 64), EFAULT);
	/* A mapping split by mprotect: one range over the three parts. */
	expect("mprotect", mprotect(vpm + 16 * PAGE, PAGE, PROT_READ) ? errno : 0, 0);
	expect("persist over a split mapping", call(VPM_IOC_PERSIST, vpm + 15 * PAGE, 3 * PAGE), 0);
	mprotect(vpm + 16 * PAGE, PAGE, PROT_READ | PROT_WRITE);
	/* Two neighbouring mappings of distant vPM offsets, and one with an anonymous page. */
	uint8_t *pair = mmap(NULL, 3 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *a = mmap(pair, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 10 * PAGE);
	void *b = mmap(pair + PAGE, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 20 * PAGE);
	void *c = mmap(pair + 2 * PAGE, PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (pair == MAP_FAILED || a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED) {
		fail("neighbouring mappings", errno, 0);
	} else {
		expect("persist over two mappings", call(VPM_IOC_PERSIST, pair + PAGE - 64, 128), 0);
		expect("flush over two mappings", call(VPM_IOC_FLUSH, pair, 2 * PAGE), 0);
		expect("drain", ioctl(fd, VPM_IOC_DRAIN) == 0 ? 0 : errno, 0);
		expect("range into an anonymous page", call(VPM_IOC_PERSIST, pair + 2 * PAGE - 64, 128),
		       EFAULT);
	}
	munmap(pair, 3 * PAGE);
	char path[64], text[32] = "";
	struct stat sb;
	fstat(fd, &sb);
	snprintf(path, sizeof(path), "/sys/dev/char/%u:%u/size", major(sb.st_rdev), minor(sb.st_rdev));
	FILE *f = fopen(path, "r");
	if (!f || !fgets(text, sizeof(text), f))
		fail("read sysfs size", errno, 0);
	else
		expect("sysfs size", strtoull(text, NULL, 10) == info.vpm_size ? 0 : EINVAL, 0);
	if (f)
		fclose(f);
	munmap((void *)st, PAGE);
}

static void basic(void)
{
	uint8_t local[64];
	memset(vpm, 0x11, 64);
	expect("persist 64 B", call(VPM_IOC_PERSIST, vpm, 64), 0);
	memset(vpm + PAGE, 0x22, 3 * PAGE);
	expect("flush", call(VPM_IOC_FLUSH, vpm + PAGE, 2 * PAGE), 0);
	expect("flush", call(VPM_IOC_FLUSH, vpm + 3 * PAGE, 100), 0);
	expect("drain", ioctl(fd, VPM_IOC_DRAIN) == 0 ? 0 : errno, 0);
	expect("set transient", call(VPM_IOC_SET_TRANSIENT, vpm + 8 * PAGE, 4 * PAGE), 0);
	expect("set persistent", call(VPM_IOC_SET_PERSISTENT, vpm + 8 * PAGE, 4 * PAGE), 0);
	expect("request epoch", ioctl(fd, VPM_IOC_REQUEST_EPOCH) == 0 ? 0 : errno, 0);
	/* Error cases. */
	expect("zero length", call(VPM_IOC_PERSIST, vpm, 0), EINVAL);
	expect("unaligned transient", call(VPM_IOC_SET_TRANSIENT, vpm + 64, PAGE), EINVAL);
	expect("past the mapping", call(VPM_IOC_PERSIST, vpm + info.vpm_size - 32, 64), EFAULT);
	expect("outside any mapping", call(VPM_IOC_PERSIST, local, 64), EFAULT);
	expect("wrapping range", call(VPM_IOC_PERSIST, vpm, UINT64_MAX), EINVAL);
	expect("bad ioctl", ioctl(fd, _IO('V', 99)) == 0 ? 0 : errno, ENOTTY);
	mappings();
	ioctl(fd, VPM_IOC_INFO, &info);
	printf("host served %llu hints, refused %llu\n", (unsigned long long)info.served,
	       (unsigned long long)info.rejected);
}

static void writer(void)
{
	uint8_t *scratch = vpm + info.vpm_size - SCRATCH_PAGES * PAGE;
	expect("scratch transient", call(VPM_IOC_SET_TRANSIENT, scratch, SCRATCH_PAGES * PAGE), 0);
	for (uint64_t seq = 1;; seq++) {
		uint64_t *rec = (uint64_t *)(vpm + ((seq - 1) % slots()) * REC);
		for (int i = 7; i >= 0; i--)
			rec[i] = word(seq, i);
		if (call(VPM_IOC_FLUSH, rec, REC))
			fail("flush", errno, 0);
		memset(scratch + (seq % SCRATCH_PAGES) * PAGE, (int)seq | 1, PAGE);
		if (seq % 16 == 0) {
			int r = ioctl(fd, VPM_IOC_DRAIN) == 0 ? 0 : errno;
			if (r) {
				fail("drain", r, 0);
				return;
			}
			printf("ACKED %llu\n", (unsigned long long)seq);
			fflush(stdout);
		}
	}
}

static void flood(void)
{
	for (uint64_t seq = 1;; seq++) {
		uint64_t *rec = (uint64_t *)(vpm + ((seq - 1) % slots()) * REC);
		for (int i = 7; i >= 0; i--)
			rec[i] = word(seq, i);
		int r = call(VPM_IOC_FLUSH, rec, REC);
		if (!r && seq % 1024 == 0)
			r = ioctl(fd, VPM_IOC_DRAIN) == 0 ? 0 : errno;
		if (r) {
			printf("VPMTEST flood stopped: %d (%s) after %llu records\n", r, strerror(r),
			       (unsigned long long)seq);
			return;
		}
		if (seq % 1024 == 0) {
			printf("ACKED %llu\n", (unsigned long long)seq);
			fflush(stdout);
		}
	}
}

static void check(uint64_t acked)
{
	uint64_t n = slots(), bad = 0;
	uint64_t first = acked > n ? acked - n + 1 : 1;
	for (uint64_t r = first; r <= acked && r > 0; r++) {
		uint64_t *rec = (uint64_t *)(vpm + ((r - 1) % n) * REC);
		/* The record, or a later one over it (written after the ack), word by word. */
		if (!record_intact(rec, r, n, SALT)) {
			if (!bad++)
				printf("VPMTEST FAIL record %llu lost (slot holds %llu)\n",
				       (unsigned long long)r, (unsigned long long)rec[0]);
		}
	}
	uint8_t *scratch = vpm + info.vpm_size - SCRATCH_PAGES * PAGE;
	for (uint64_t i = 0; i < SCRATCH_PAGES * PAGE; i++)
		if (scratch[i]) {
			printf("VPMTEST FAIL transient scratch byte %llu is %u\n", (unsigned long long)i, scratch[i]);
			bad++;
			break;
		}
	failures += bad != 0;
	printf("checked records %llu..%llu\n", (unsigned long long)first, (unsigned long long)acked);
}

/* Makes the driver send the next `n` FLUSH pieces where the host refuses them. */
static int inject_refused_flushes(int n)
{
	FILE *f = fopen("/sys/kernel/debug/vpm/inject_refused_flushes", "w");
	if (!f)
		return errno;
	fprintf(f, "%d\n", n);
	return fclose(f) ? errno : 0;
}

static int drain(void)
{
	return ioctl(fd, VPM_IOC_DRAIN) == 0 ? 0 : errno;
}

static void refused(void)
{
	memset(vpm, 0x44, 3 * PAGE);
	expect("inject", inject_refused_flushes(1), 0);
	expect("flush (queued)", call(VPM_IOC_FLUSH, vpm, 64), 0);
	expect("good flush", call(VPM_IOC_FLUSH, vpm + PAGE, 64), 0);
	expect("drain after a refused flush", drain(), EFAULT);
	expect("next drain", drain(), 0);
	/* A persist rings the doorbell between the refused flush and the drain. */
	expect("inject", inject_refused_flushes(1), 0);
	expect("flush (queued)", call(VPM_IOC_FLUSH, vpm + 2 * PAGE, 64), 0);
	expect("persist", call(VPM_IOC_PERSIST, vpm, 64), 0);
	expect("drain after a refused flush and a persist", drain(), EFAULT);
	/* More flushes than the ring holds: the refused one is among the first. */
	expect("inject", inject_refused_flushes(1), 0);
	for (int i = 0; i < 200; i++)
		expect("flush", call(VPM_IOC_FLUSH, vpm + (i % 3) * PAGE, 64), 0);
	expect("drain after a full ring", drain(), EFAULT);
	expect("clean flush", call(VPM_IOC_FLUSH, vpm, 64), 0);
	expect("clean drain", drain(), 0);
}

static int pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		return errno;
	return sched_getcpu() == cpu ? 0 : EAGAIN;
}

static void migrate(void)
{
	memset(vpm, 0x55, 2 * PAGE);
	for (int round = 0; round < 4; round++) {
		int from = round & 1, to = !from;
		expect("pin (flush)", pin(from), 0);
		expect("inject", inject_refused_flushes(1), 0);
		expect("refused flush (queued)", call(VPM_IOC_FLUSH, vpm, 64), 0);
		expect("pin (drain)", pin(to), 0);
		expect("drain on the other CPU after a refused flush", drain(), EFAULT);
		expect("pin (flush)", pin(from), 0);
		expect("good flush", call(VPM_IOC_FLUSH, vpm + PAGE, 64), 0);
		expect("pin (drain)", pin(to), 0);
		expect("drain on the other CPU", drain(), 0);
	}
}

static void pattern(uint64_t bytes, int byte)
{
	if (bytes > info.vpm_size) {
		fail("pattern longer than vPM", EINVAL, 0);
		return;
	}
	for (uint64_t i = 0; i < bytes; i++) {
		if (vpm[i] != (uint8_t)byte) {
			printf("VPMTEST FAIL byte %llu is %#x, want %#x\n", (unsigned long long)i, vpm[i],
			       byte);
			failures++;
			return;
		}
	}
	printf("checked %llu bytes of %#x\n", (unsigned long long)bytes, byte);
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "basic";
	fd = open("/dev/vpm", O_RDWR);
	if (fd < 0) {
		printf("VPMTEST FAIL open /dev/vpm: %s\n", strerror(errno));
		return 1;
	}
	if (ioctl(fd, VPM_IOC_INFO, &info)) {
		printf("VPMTEST FAIL info: %s\n", strerror(errno));
		return 1;
	}
	vpm = mmap(NULL, info.vpm_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (vpm == MAP_FAILED) {
		printf("VPMTEST FAIL mmap: %s\n", strerror(errno));
		return 1;
	}
	printf("vPM at %#llx, %llu MiB, features %#x\n", (unsigned long long)info.vpm_base,
	       (unsigned long long)(info.vpm_size >> 20), info.features);
	if (!strcmp(mode, "basic"))
		basic();
	else if (!strcmp(mode, "writer"))
		writer();
	else if (!strcmp(mode, "check"))
		check(argc > 2 ? strtoull(argv[2], NULL, 10) : 0);
	else if (!strcmp(mode, "refused"))
		refused();
	else if (!strcmp(mode, "migrate"))
		migrate();
	else if (!strcmp(mode, "flood"))
		flood();
	else if (!strcmp(mode, "pattern") && argc > 3)
		pattern(strtoull(argv[2], NULL, 0), (int)strtol(argv[3], NULL, 0));
	else
		fail("unknown mode", EINVAL, 0);
	printf(failures ? "VPMTEST %s FAILED\n" : "VPMTEST %s OK\n", mode);
	return failures != 0;
}
