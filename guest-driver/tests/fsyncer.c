/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * fsyncer: an fsync-heavy workload on a mounted filesystem, for crash trials whose witness is the
 * console (on the host, outside the pool).
 *   fsyncer run DIR TAG      creates DIR/TAG-0, DIR/TAG-1, ... with content derived from the name;
 *                            after write + fsync(file) + fsync(DIR) prints one line
 *                            "FSYNC-ACK name len crc32" (one write(2), so lines never interleave)
 *   fsyncer nosync DIR TAG   rewrites DIR/nosync-TAG (1 MiB) and creates and removes small
 *                            scratch files for ever, never syncing
 *   fsyncer bench DIR TAG N  a fixed mixed workload for benchmarks: N operations of the syncing
 *                            writer (even: append 4 KiB to DIR/TAG-log and fsync it; odd: create
 *                            DIR/TAG-i of 4 KiB, fsync it and DIR), each timed and printed as
 *                            "FSYNC-LAT ns" per fsync(2) call, while a second process rewrites
 *                            DIR/nosync-TAG (8 MiB) 1 MiB per operation and never syncs
 *                            ("FSYNCER nosync_bytes=B" at its end); ends with
 *                            "FSYNCER bench fsyncs=F"
 *   fsyncer check DIR        prints "FILE name len crc32" for every regular file in DIR except the
 *                            nosync ones, then "FSYNCER check done N"
 * Lengths and content depend on the name only (crc32 as zlib's), so the host can check a file
 * against the acknowledged line without the guest keeping any state.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LEN (16 * 1024)

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static uint32_t crc32(const unsigned char *p, size_t n)
{
	uint32_t c = 0xffffffffu;
	while (n--)
		c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c ^ 0xffffffffu;
}

/* FNV-1a of the name: the seed of its length and content. */
static uint64_t name_seed(const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ull;
	return h ? h : 1;
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Fills buf with the name's content; returns its length (1 .. MAX_LEN bytes). */
static size_t content(const char *name, unsigned char *buf)
{
	uint64_t s = name_seed(name);
	size_t len = 1 + xorshift(&s) % MAX_LEN;
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(xorshift(&s) >> 24);
	return len;
}

static void say(const char *line)
{
	size_t n = strlen(line);
	while (n) {
		ssize_t w = write(1, line, n);
		if (w <= 0)
			return;
		line += w;
		n -= (size_t)w;
	}
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int run(const char *dir, const char *tag)
{
	static unsigned char buf[MAX_LEN];
	char path[512], name[256], line[400];
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (dfd < 0) {
		perror("fsyncer: open dir");
		return 1;
	}
	say("FSYNCER start\n");
	for (unsigned long i = 0;; i++) {
		snprintf(name, sizeof(name), "%s-%lu", tag, i);
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		size_t len = content(name, buf);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write_all(fd, buf, len) || fsync(fd) || close(fd) || fsync(dfd)) {
			snprintf(line, sizeof(line), "FSYNCER FAIL %s errno %d\n", name, errno);
			say(line);
			return 1;
		}
		snprintf(line, sizeof(line), "FSYNC-ACK %s %zu %08x\n", name, len, crc32(buf, len));
		say(line);
	}
}

static _Noreturn void nosync(const char *dir, const char *tag)
{
	static unsigned char buf[1 << 20];
	char path[512], scratch[512];
	snprintf(path, sizeof(path), "%s/nosync-%s", dir, tag);
	uint64_t s = name_seed(tag);
	for (unsigned long round = 0;; round++) {
		for (size_t i = 0; i < sizeof(buf); i += 8)
			*(uint64_t *)(buf + i) = xorshift(&s);
		int fd = open(path, O_WRONLY | O_CREAT, 0644);
		if (fd >= 0) {
			(void)!write_all(fd, buf, sizeof(buf));
			close(fd);
		}
		snprintf(scratch, sizeof(scratch), "%s/nosync-%s-scratch%lu", dir, tag, round % 8);
		fd = open(scratch, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			(void)!write_all(fd, buf, 4096 * (1 + round % 4));
			close(fd);
		}
		if (round % 3 == 0) {
			snprintf(scratch, sizeof(scratch), "%s/nosync-%s-scratch%lu", dir, tag,
				 (round + 4) % 8);
			unlink(scratch);
		}
	}
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* fsync(2) of fd, timed: prints "FSYNC-LAT ns"; returns fsync's result. */
static int timed_fsync(int fd)
{
	char line[64];
	uint64_t t0 = now_ns();
	int r = fsync(fd);
	snprintf(line, sizeof(line), "FSYNC-LAT %llu\n", (unsigned long long)(now_ns() - t0));
	say(line);
	return r;
}

/* The never-syncing writer of `bench`: 1 MiB buffered per byte read from `rd`, until EOF. */
static _Noreturn void bench_nosync(const char *dir, const char *tag, int rd)
{
	static unsigned char buf[1 << 20];
	char path[512], b;
	unsigned long long total = 0;
	uint64_t s = name_seed(tag);
	snprintf(path, sizeof(path), "%s/nosync-%s", dir, tag);
	int fd = open(path, O_WRONLY | O_CREAT, 0644);
	for (unsigned long round = 0; fd >= 0 && read(rd, &b, 1) == 1; round++) {
		for (size_t i = 0; i < sizeof(buf); i += 8)
			*(uint64_t *)(buf + i) = xorshift(&s);
		if (pwrite(fd, buf, sizeof(buf), (off_t)(round % 8) * (off_t)sizeof(buf)) > 0)
			total += sizeof(buf);
	}
	snprintf(path, sizeof(path), "FSYNCER nosync_bytes=%llu\n", total);
	say(path);
	_exit(0);
}

static int bench(const char *dir, const char *tag, unsigned long n)
{
	static unsigned char buf[4096];
	char path[512], line[128];
	unsigned long fsyncs = 0;
	int p[2];
	if (pipe(p)) {
		perror("fsyncer: pipe");
		return 1;
	}
	pid_t child = fork();
	if (child == 0) {
		close(p[1]);
		bench_nosync(dir, tag, p[0]);
	}
	close(p[0]);
	snprintf(path, sizeof(path), "%s/%s-log", dir, tag);
	int log = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (child < 0 || log < 0 || dfd < 0) {
		perror("fsyncer: bench");
		return 1;
	}
	say("FSYNCER bench start\n");
	for (unsigned long i = 0; i < n; i++) {
		(void)!write(p[1], "x", 1);
		memset(buf, (int)(i & 0xff), sizeof(buf));
		int bad;
		if (i % 2 == 0) {
			bad = write_all(log, buf, sizeof(buf)) || timed_fsync(log);
			fsyncs++;
		} else {
			snprintf(path, sizeof(path), "%s/%s-%lu", dir, tag, i);
			int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
			bad = fd < 0 || write_all(fd, buf, sizeof(buf)) || timed_fsync(fd) || close(fd) ||
			      timed_fsync(dfd);
			fsyncs += 2;
		}
		if (bad) {
			snprintf(line, sizeof(line), "FSYNCER FAIL bench %lu errno %d\n", i, errno);
			say(line);
			return 1;
		}
	}
	close(p[1]);
	waitpid(child, NULL, 0);
	snprintf(line, sizeof(line), "FSYNCER bench fsyncs=%lu\n", fsyncs);
	say(line);
	return 0;
}

static int check(const char *dir)
{
	static unsigned char buf[MAX_LEN + 1];
	char path[512], line[400];
	unsigned long n = 0;
	DIR *d = opendir(dir);
	if (!d) {
		perror("fsyncer: opendir");
		return 1;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.' || !strncmp(e->d_name, "nosync-", 7))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		int fd = open(path, O_RDONLY);
		if (fd < 0)
			continue;
		size_t len = 0;
		ssize_t r;
		while (len < sizeof(buf) && (r = read(fd, buf + len, sizeof(buf) - len)) > 0)
			len += (size_t)r;
		close(fd);
		snprintf(line, sizeof(line), "FILE %s %zu %08x\n", e->d_name, len, crc32(buf, len));
		say(line);
		n++;
	}
	closedir(d);
	snprintf(line, sizeof(line), "FSYNCER check done %lu\n", n);
	say(line);
	return 0;
}

int main(int argc, char **argv)
{
	crc_init();
	if (argc == 4 && !strcmp(argv[1], "run"))
		return run(argv[2], argv[3]);
	if (argc == 4 && !strcmp(argv[1], "nosync"))
		nosync(argv[2], argv[3]);
	if (argc == 5 && !strcmp(argv[1], "bench"))
		return bench(argv[2], argv[3], strtoul(argv[4], NULL, 10));
	if (argc == 3 && !strcmp(argv[1], "check"))
		return check(argv[2]);
	fprintf(stderr, "usage: fsyncer run DIR TAG | nosync DIR TAG | bench DIR TAG N | check DIR\n");
	return 2;
}
