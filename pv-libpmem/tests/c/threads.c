/* SPDX-License-Identifier: BSD-3-Clause OR MIT */
/*
 * threads: NTHREADS threads persist records concurrently to one pmem file through whichever
 * libpmem.so.1 the loader picks (so the same program compares pv-libpmem with Debian's).
 * Each thread owns a ring of SLOTS records of RECSZ bytes; a record carries its thread, its
 * sequence number, a payload derived from both and a checksum over the whole rest of it. The
 * threads use different persist paths (memcpy_persist, persist, memcpy_nodrain + drain,
 * flush + drain, msync), so they exercise the library's flush/drain state at the same time.
 *
 * Phase 1 (deterministic): every thread writes PHASE1 records, the threads are joined, every
 * slot is verified and a digest of the whole file is printed ("digest ..."): it must be the same
 * with either library.
 * Phase 2 (kill): a child process runs the threads forever; each thread reports every record it
 * persisted (after the persist call returned) over a pipe: the witness outside the file. Once
 * the parent has seen KILL_AFTER acknowledgements it sends SIGKILL, drains the pipe, checks the
 * child died of SIGKILL, maps the file again and verifies that, for every thread, each
 * acknowledged record still in its ring (the last SLOTS - 1) is whole: right thread, right
 * sequence number, right payload, checksum over the whole record.
 *
 * Usage: threads DIR. Exit 0 and "THREADS OK" on success.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpmem.h>

#define NTHREADS 4
#define SLOTS 512
#define RECSZ 256
#define PHASE1 3000
#define KILL_AFTER 40000
#define FILE_LEN ((size_t)NTHREADS * SLOTS * RECSZ)

struct record {
	uint64_t seq;
	uint32_t thread;
	uint32_t magic;
	unsigned char payload[RECSZ - 24];
	uint64_t sum; /* FNV-1a over every byte before it */
};
_Static_assert(sizeof(struct record) == RECSZ, "record size");

#define MAGIC 0x54485244u /* "THRD" */

struct ack {
	uint32_t thread;
	uint32_t pad;
	uint64_t seq;
};

static char *base;
static int ack_fd = -1;
static uint64_t limit; /* records per thread; 0 = forever */

static uint64_t fnv(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static void fill(struct record *r, uint32_t thread, uint64_t seq)
{
	uint64_t x = (seq + 1) * 0x9e3779b97f4a7c15ull ^ ((uint64_t)thread << 56);
	r->seq = seq;
	r->thread = thread;
	r->magic = MAGIC;
	for (size_t i = 0; i < sizeof(r->payload); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		r->payload[i] = (unsigned char)x;
	}
	r->sum = fnv(r, offsetof(struct record, sum));
}

static struct record *slot(uint32_t thread, uint64_t seq)
{
	return (struct record *)(base + ((size_t)thread * SLOTS + seq % SLOTS) * RECSZ);
}

/* Whether the record for (thread, seq) is whole in the mapped file. */
static int intact(uint32_t thread, uint64_t seq)
{
	struct record want;
	fill(&want, thread, seq);
	const struct record *r = slot(thread, seq);
	return r->sum == fnv(r, offsetof(struct record, sum)) && memcmp(r, &want, RECSZ) == 0;
}

static void die(const char *what)
{
	fprintf(stderr, "threads: %s: %s [errno %d, errormsg \"%s\"]\n", what, strerror(errno), errno,
		pmem_errormsg());
	exit(1);
}

static void *writer(void *arg)
{
	uint32_t t = (uint32_t)(uintptr_t)arg;
	struct record r;
	for (uint64_t seq = 0; limit == 0 || seq < limit; seq++) {
		fill(&r, t, seq);
		struct record *dst = slot(t, seq);
		switch ((t + seq) % 5) {
		case 0:
			pmem_memcpy_persist(dst, &r, RECSZ);
			break;
		case 1:
			memcpy(dst, &r, RECSZ);
			pmem_persist(dst, RECSZ);
			break;
		case 2:
			pmem_memcpy_nodrain(dst, &r, RECSZ);
			pmem_drain();
			break;
		case 3:
			memcpy(dst, &r, RECSZ);
			pmem_flush(dst, RECSZ);
			pmem_drain();
			break;
		default:
			memcpy(dst, &r, RECSZ);
			if (pmem_msync(dst, RECSZ) != 0)
				die("pmem_msync");
		}
		if (ack_fd >= 0) {
			struct ack a = { .thread = t, .seq = seq };
			/* At most PIPE_BUF bytes: the write is atomic. */
			if (write(ack_fd, &a, sizeof(a)) != sizeof(a))
				die("write the acknowledgement");
		}
	}
	return NULL;
}

static void run_threads(void)
{
	pthread_t th[NTHREADS];
	for (uintptr_t t = 0; t < NTHREADS; t++)
		if (pthread_create(&th[t], NULL, writer, (void *)t) != 0)
			die("pthread_create");
	for (int t = 0; t < NTHREADS; t++)
		pthread_join(th[t], NULL);
}

static char *map(const char *path, int create)
{
	size_t len = 0;
	char *p = create ? pmem_map_file(path, FILE_LEN, PMEM_FILE_CREATE, 0600, &len, NULL)
			 : pmem_map_file(path, 0, 0, 0, &len, NULL);
	if (p == NULL)
		die("pmem_map_file");
	if (len != FILE_LEN) {
		fprintf(stderr, "threads: mapped %zu bytes, not %zu\n", len, FILE_LEN);
		exit(1);
	}
	return p;
}

static int phase1(const char *dir)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/phase1", dir);
	base = map(path, 1);
	limit = PHASE1;
	run_threads();
	int bad = 0;
	for (uint32_t t = 0; t < NTHREADS; t++)
		for (uint64_t s = PHASE1 - SLOTS; s < PHASE1; s++)
			bad += !intact(t, s);
	printf("phase 1: %d threads x %d records, digest %016llx, %d bad records\n", NTHREADS,
	       PHASE1, (unsigned long long)fnv(base, FILE_LEN), bad);
	pmem_unmap(base, FILE_LEN);
	return bad;
}

static int phase2(const char *dir)
{
	char path[600];
	snprintf(path, sizeof(path), "%s/phase2", dir);
	base = map(path, 1);
	pmem_unmap(base, FILE_LEN);
	int fds[2];
	if (pipe(fds) != 0)
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		close(fds[0]);
		base = map(path, 0);
		ack_fd = fds[1];
		limit = 0;
		run_threads();
		_exit(2); /* never reached: the writers run until killed */
	}
	close(fds[1]);
	int64_t acked[NTHREADS];
	for (int t = 0; t < NTHREADS; t++)
		acked[t] = -1;
	uint64_t total = 0;
	int killed = 0, order = 0;
	struct ack buf[256];
	size_t have = 0; /* bytes in buf */
	for (;;) {
		ssize_t n = read(fds[0], (char *)buf + have, sizeof(buf) - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read the acknowledgements");
		if (n == 0)
			break;
		have += (size_t)n;
		size_t whole = have / sizeof(struct ack);
		for (size_t i = 0; i < whole; i++) {
			struct ack a = buf[i];
			if (a.thread >= NTHREADS || (int64_t)a.seq != acked[a.thread] + 1)
				order++;
			else
				acked[a.thread] = (int64_t)a.seq;
			total++;
		}
		memmove(buf, (char *)buf + whole * sizeof(struct ack), have - whole * sizeof(struct ack));
		have -= whole * sizeof(struct ack);
		if (!killed && total >= KILL_AFTER) {
			if (kill(pid, SIGKILL) != 0)
				die("kill");
			killed = 1;
		}
	}
	int status;
	if (waitpid(pid, &status, 0) != pid)
		die("waitpid");
	if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
		fprintf(stderr, "threads: the writer was not killed by SIGKILL (status %#x)\n", status);
		return 1;
	}
	base = map(path, 0);
	int bad = order, idle = 0;
	uint64_t checked = 0;
	for (uint32_t t = 0; t < NTHREADS; t++) {
		if (acked[t] < 0) {
			idle++;
			continue;
		}
		/* The slot after the last acknowledged record may hold a torn unacknowledged one. */
		int64_t first = acked[t] - (SLOTS - 2);
		for (int64_t s = first < 0 ? 0 : first; s <= acked[t]; s++, checked++)
			if (!intact(t, (uint64_t)s)) {
				printf("thread %u: acknowledged record %lld lost or torn\n", t,
				       (long long)s);
				bad++;
			}
	}
	printf("phase 2: killed by SIGKILL after %llu acknowledgements (per thread:", (unsigned long long)total);
	for (int t = 0; t < NTHREADS; t++)
		printf(" %lld", (long long)acked[t] + 1);
	printf("), %llu acknowledged records checked, %d bad, %d out of order, %d threads idle\n",
	       (unsigned long long)checked, bad - order, order, idle);
	pmem_unmap(base, FILE_LEN);
	return bad + idle;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: threads DIR\n");
		return 2;
	}
	int bad = phase1(argv[1]);
	bad += phase2(argv[1]);
	if (bad)
		return 1;
	printf("THREADS OK\n");
	return 0;
}
