/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * pmemtest: a libpmem program (linked with pv-libpmem) on /dev/vpm inside the guest.
 *   pmemtest basic      map /dev/vpm with pmem_map_file, persist with every libpmem call, mark
 *                       transient, request an epoch
 *   pmemtest writer     64-byte records with pmem_memcpy_nodrain, pmem_drain every 16 records,
 *                       "ACKED n" after each drain
 *   pmemtest check N    every record <= N survived the host crash, all 8 words of it
 *   pmemtest threads    4 threads persist records into their own quarters at once (copies with
 *                       pmem_memcpy_nodrain + pmem_drain, and pmem_persist); each reads its
 *                       records back, and no PV persist was lost
 *   pmemtest twriter    4 threads persist checksummed records into their own areas of the first
 *                       half of vPM (see trec_fill) until their areas are full, "TW-ACK t n cpu"
 *                       after each pmem_drain: thread t's records 1..n are acknowledged
 *   pmemtest lat N      latency of N pmem_persist calls of 64 B and of 4 KiB (one thread):
 *                       "PMEMLAT size p50_us p99_us max_us ops_per_s" per size
 *   pmemtest tcheck N1 N2 N3 N4
 *                       thread t's records 1..Nt all survived the host crash, every word and
 *                       the checksum (crash tests: Nt from the console of the killed run)
 */
#define _GNU_SOURCE
#include "records.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpmem.h>
#include <vpm.h>

#define REC 64ULL

static int failures;
#define CHECK(c, what) do { if (!(c)) { failures++; printf("PMEMTEST FAIL %s (errno %d: %s)\n", what, errno, \
	pmem_errormsg()); } } while (0)

#define SALT 100

static uint64_t word(uint64_t seq, int i)
{
	return record_word(seq, i, SALT);
}

#define THREADS 4
#define THREAD_RECORDS 20000ULL

struct worker {
	char *base;	/* this thread's quarter */
	uint64_t slots;
	int id;
	int bad;
};

/* One thread's records: word(seq, i) tagged with the thread id in the high byte of seq. */
static void *worker_run(void *arg)
{
	struct worker *w = arg;
	for (uint64_t n = 1; n <= THREAD_RECORDS; n++) {
		uint64_t seq = ((uint64_t)w->id << 56) | n, rec[8];
		char *dst = w->base + ((n - 1) % w->slots) * REC;
		for (int i = 0; i < 8; i++)
			rec[i] = word(seq, i);
		if (n % 2) {
			pmem_memcpy_nodrain(dst, rec, REC);
			if (n % 8 == 7)
				pmem_drain();
		} else {
			memcpy(dst, rec, REC);
			pmem_persist(dst, REC);
		}
	}
	pmem_drain();
	for (uint64_t n = THREAD_RECORDS > w->slots ? THREAD_RECORDS - w->slots + 1 : 1;
	     n <= THREAD_RECORDS; n++) {
		const uint64_t *rec = (const uint64_t *)(w->base + ((n - 1) % w->slots) * REC);
		uint64_t seq = ((uint64_t)w->id << 56) | n;
		for (int i = 0; i < 8; i++)
			if (rec[i] != word(seq, i))
				w->bad++;
	}
	return NULL;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void threads(char *p, size_t len)
{
	pthread_t t[THREADS];
	struct worker w[THREADS];
	size_t quarter = len / THREADS / REC * REC;
	uint64_t start = now_ns();
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){ .base = p + i * quarter, .slots = quarter / REC, .id = i + 1 };
		CHECK(pthread_create(&t[i], NULL, worker_run, &w[i]) == 0, "pthread_create");
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		CHECK(w[i].bad == 0, "a thread's records read back wrong");
	}
	double secs = (double)(now_ns() - start) / 1e9;
	CHECK(pmem_vpm_failures() == 0, "a PV persist was lost");
	printf("%d threads persisted %llu records each\n", THREADS, THREAD_RECORDS);
	printf("THREADS-RATE %.2f s %.0f records/s\n", secs, THREADS * THREAD_RECORDS / secs);
}

/* twriter/tcheck: record n of thread t is word 0 = t << 56 | n, words 1-6 derived from word 0,
 * word 7 a checksum over words 0-6 (a record torn by the crash fails it). */
#define TW_THREADS 4
#define TW_BATCH 8

static uint64_t mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t trec_sum(const uint64_t *rec)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (int i = 0; i < 7; i++)
		h = mix(h ^ rec[i]);
	return h;
}

static void trec_fill(uint64_t *rec, int t, uint64_t n)
{
	rec[0] = (uint64_t)t << 56 | n;
	for (int i = 1; i < 7; i++)
		rec[i] = mix(rec[0] * 8 + (uint64_t)i);
	rec[7] = trec_sum(rec);
}

static int trec_ok(const uint64_t *rec, int t, uint64_t n)
{
	uint64_t want[8];
	trec_fill(want, t, n);
	return !memcmp(rec, want, sizeof(want)) && rec[7] == trec_sum(rec);
}

/* One line per write(2), so the threads' lines never interleave on the console. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && write(1, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1) < 0)
		failures++;
}

struct tw {
	char *base;	/* this thread's area */
	uint64_t slots;
	int id;
};

/* Thread t's writer: records through three libpmem paths, a drain every TW_BATCH records, then
 * the acknowledgement on the console (the witness outside the pool). */
static void *tw_run(void *arg)
{
	struct tw *w = arg;
	for (uint64_t n = 1; n <= w->slots; n++) {
		uint64_t rec[8];
		char *dst = w->base + (n - 1) * REC;
		trec_fill(rec, w->id, n);
		switch (n % 3) {
		case 0:
			pmem_memcpy_nodrain(dst, rec, REC);
			break;
		case 1:
			memcpy(dst, rec, REC);
			pmem_flush(dst, REC);
			break;
		default:
			memcpy(dst, rec, REC);
			pmem_persist(dst, REC);
		}
		if (n % TW_BATCH == 0) {
			/* Every other batch, let other threads run (and drain) between this thread's
			 * flushes and its drain: its drain must still wait for its own flushes. */
			if (n / TW_BATCH % 2)
				sched_yield();
			pmem_drain();
			if (pmem_vpm_failures() != 0) {
				say("PMEMTEST FAIL thread %d: a PV persist was lost at %llu\n", w->id,
				    (unsigned long long)n);
				return NULL;
			}
			say("TW-ACK %d %llu %d\n", w->id, (unsigned long long)n, sched_getcpu());
		}
	}
	say("TW-FULL %d\n", w->id);
	return NULL;
}

/* Thread t's area: a quarter of the first half of vPM. */
static struct tw tw_area(char *p, size_t len, int t)
{
	size_t area = len / 2 / TW_THREADS / REC * REC;
	return (struct tw){ .base = p + (size_t)(t - 1) * area, .slots = area / REC, .id = t };
}

static void twriter(char *p, size_t len)
{
	pthread_t th[TW_THREADS];
	struct tw w[TW_THREADS];
	char online[64] = "?";
	FILE *f = fopen("/sys/devices/system/cpu/online", "r");
	if (f) {
		if (fgets(online, sizeof(online), f))
			online[strcspn(online, "\n")] = 0;
		fclose(f);
	}
	say("TW-CPUS online=%s nproc=%ld\n", online, sysconf(_SC_NPROCESSORS_ONLN));
	for (int t = 1; t <= TW_THREADS; t++) {
		w[t - 1] = tw_area(p, len, t);
		CHECK(pthread_create(&th[t - 1], NULL, tw_run, &w[t - 1]) == 0, "pthread_create");
	}
	for (int t = 0; t < TW_THREADS; t++)
		pthread_join(th[t], NULL);
}

static void tcheck(char *p, size_t len, int argc, char **argv)
{
	for (int t = 1; t <= TW_THREADS; t++) {
		struct tw w = tw_area(p, len, t);
		uint64_t acked = argc > t + 1 ? strtoull(argv[t + 1], NULL, 10) : 0, bad = 0, more = 0;
		CHECK(acked <= w.slots, "acknowledged more records than the area holds");
		for (uint64_t n = 1; n <= acked && n <= w.slots; n++) {
			if (!trec_ok((const uint64_t *)(w.base + (n - 1) * REC), t, n)) {
				if (!bad)
					printf("PMEMTEST FAIL thread %d record %llu lost or torn\n", t,
					       (unsigned long long)n);
				bad++;
			}
		}
		/* Records written after the last acknowledgement that made it too (not required). */
		while (acked + more < w.slots &&
		       trec_ok((const uint64_t *)(w.base + (acked + more) * REC), t, acked + more + 1))
			more++;
		if (bad)
			failures++;
		printf("TW-CHECK %d acked %llu bad %llu beyond %llu\n", t, (unsigned long long)acked,
		       (unsigned long long)bad, (unsigned long long)more);
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* TSC ticks per ns. Under TCG the guest's clock is jiffies (4 ms steps), too coarse for one
 * persist; the TSC (the host's, under TCG) is calibrated against it over 1 s. */
static double tsc_per_ns(void)
{
	uint64_t t0 = now_ns(), c0 = __builtin_ia32_rdtsc(), t1;
	while ((t1 = now_ns()) - t0 < 1000000000ULL)
		;
	return (double)(__builtin_ia32_rdtsc() - c0) / (double)(t1 - t0);
}

/* pmem_persist latency: n calls per size into the second half of vPM, each timed. */
static void lat(char *p, size_t len, uint64_t n)
{
	static const size_t sizes[] = { 64, 4096 };
	uint64_t *t = calloc(n, sizeof(*t));
	CHECK(t != NULL && n > 0, "lat: allocation");
	if (!t || !n)
		return;
	double per_ns = tsc_per_ns();
	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
		size_t sz = sizes[s], span = len / 2 / sz;
		uint64_t start = __builtin_ia32_rdtsc();
		for (uint64_t i = 0; i < n; i++) {
			char *dst = p + len / 2 + (i % span) * sz;
			memset(dst, (int)(i & 0xff), sz);
			uint64_t t0 = __builtin_ia32_rdtsc();
			pmem_persist(dst, sz);
			t[i] = __builtin_ia32_rdtsc() - t0;
		}
		double total_ns = (double)(__builtin_ia32_rdtsc() - start) / per_ns;
		qsort(t, n, sizeof(*t), cmp_u64);
		printf("PMEMLAT %zu %.1f %.1f %.1f %.0f\n", sz, t[n / 2] / per_ns / 1e3,
		       t[n * 99 / 100] / per_ns / 1e3, t[n - 1] / per_ns / 1e3, n * 1e9 / total_ns);
	}
	free(t);
	CHECK(pmem_vpm_failures() == 0, "a PV persist was lost");
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "basic";
	size_t len = 0;
	int is_pmem = 0;
	char *p = pmem_map_file("/dev/vpm", 0, 0, 0, &len, &is_pmem);
	if (!p) {
		printf("PMEMTEST FAIL pmem_map_file(/dev/vpm): %s\n", pmem_errormsg());
		return 1;
	}
	CHECK(is_pmem == 1 && pmem_is_pmem(p, len), "is_pmem of /dev/vpm");
	CHECK(pmem_vpm_active(p, len) == 1, "vpm active");
	uint64_t slots = (len / 2) / REC;
	if (!strcmp(mode, "basic")) {
		static char buf[65536];
		memset(buf, 7, sizeof(buf));
		CHECK(pmem_memcpy_persist(p, buf, 4096) == p, "memcpy_persist");
		CHECK(pmem_memset_persist(p + 8192, 1, 65536) == p + 8192, "memset_persist");
		pmem_memmove_nodrain(p + 100, p, 64);
		pmem_flush(p + 200000, 64);
		pmem_flush(p + 300000, 4096);
		pmem_drain();
		pmem_persist(p + 4096, 100);
		CHECK(pmem_msync(p, 4096) == 0, "msync");
		CHECK(pmem_deep_persist(p, 128) == 0, "deep persist");
		CHECK(pmem_vpm_set_transient(p + len - (16 << 12), 16 << 12) == 0, "set transient");
		CHECK(pmem_vpm_set_persistent(p + len - (16 << 12), 16 << 12) == 0, "set persistent");
		CHECK(pmem_vpm_request_epoch() == 0, "request epoch");
		CHECK(pmem_vpm_failures() == 0, "no lost PV persist");
		CHECK(pmem_unmap(p, len) == 0, "unmap");
	} else if (!strcmp(mode, "writer")) {
		for (uint64_t seq = 1;; seq++) {
			uint64_t rec[8];
			for (int i = 0; i < 8; i++)
				rec[i] = word(seq, i);
			pmem_memcpy_nodrain(p + ((seq - 1) % slots) * REC, rec, REC);
			if (seq % 16 == 0) {
				pmem_drain();
				printf("ACKED %llu\n", (unsigned long long)seq);
				fflush(stdout);
			}
		}
	} else if (!strcmp(mode, "threads")) {
		threads(p, len);
	} else if (!strcmp(mode, "twriter")) {
		twriter(p, len);
	} else if (!strcmp(mode, "tcheck")) {
		tcheck(p, len, argc, argv);
	} else if (!strcmp(mode, "lat")) {
		lat(p, len, argc > 2 ? strtoull(argv[2], NULL, 10) : 1000);
	} else if (!strcmp(mode, "check")) {
		uint64_t acked = argc > 2 ? strtoull(argv[2], NULL, 10) : 0, lost = 0;
		for (uint64_t r = acked > slots ? acked - slots + 1 : 1; r <= acked && r > 0; r++) {
			uint64_t *rec = (uint64_t *)(p + ((r - 1) % slots) * REC);
			if (!record_intact(rec, r, slots, SALT))
				lost++;
		}
		CHECK(lost == 0, "acknowledged records lost");
		printf("checked %llu acknowledged records, %llu lost\n", (unsigned long long)acked,
		       (unsigned long long)lost);
	}
	printf(failures ? "PMEMTEST %s FAILED\n" : "PMEMTEST %s OK\n", mode);
	return failures != 0;
}
