/* SPDX-License-Identifier: BSD-3-Clause OR MIT */
/*
 * pmem_api: libpmem API checks modelled on PMDK's test cases (pmem_map_file, pmem_unmap,
 * pmem_memcpy/memmove/memset at many sizes, alignments and flags, pmem_is_pmem, errormsg,
 * check_version). Runs against whichever libpmem.so.1 the loader picks, so the same program
 * compares pv-libpmem with Debian's. Usage: pmem_api DIR [force]. Exit 0 and "ALL OK" on success.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpmem.h>

static int failures;
#define CHECK(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
	printf(__VA_ARGS__); printf(" [errno %d, errormsg \"%s\"]\n", errno, pmem_errormsg()); } } while (0)

static char dir[512];

static char *path(const char *name)
{
	static char p[600];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	return p;
}

static void map_file_cases(void)
{
	size_t len = 0;
	int is_pmem = -1;
	/* Create a new file. */
	char *p = pmem_map_file(path("a"), 4 << 20, PMEM_FILE_CREATE, 0640, &len, &is_pmem);
	CHECK(p != NULL, "create");
	CHECK(len == (4 << 20), "mapped len %zu", len);
	CHECK(is_pmem == 0 || is_pmem == 1, "is_pmem %d", is_pmem);
	struct stat st;
	CHECK(stat(path("a"), &st) == 0 && st.st_size == (4 << 20), "file size");
	CHECK((st.st_mode & 0777) == (0640 & ~umask(0)), "mode %o", st.st_mode & 0777);
	memset(p, 0xab, 4 << 20);
	pmem_persist(p, 4 << 20);
	CHECK(pmem_unmap(p, 4 << 20) == 0, "unmap");
	/* Existing file, len 0, no flags: maps the whole file with its content. */
	len = 0;
	p = pmem_map_file(path("a"), 0, 0, 0, &len, NULL);
	CHECK(p != NULL && len == (4 << 20) && (unsigned char)p[12345] == 0xab, "reopen");
	/* Partial unmaps (PMDK pmem_unmap test). */
	CHECK(pmem_unmap(p, 4096) == 0, "unmap 4 KiB at start");
	CHECK(pmem_unmap(p + (2 << 20), (1 << 20) - 1) == 0, "unmap 1 MiB - 1 in the middle");
	errno = 0;
	CHECK(pmem_unmap(p + 8192, 0) == -1 && errno == EINVAL, "unmap len 0");
	errno = 0;
	CHECK(pmem_unmap(p + 8191, 4096) == -1 && errno == EINVAL, "unmap unaligned");
	pmem_unmap(p, 4 << 20);
	/* Errors, in PMDK's order. */
	errno = 0;
	CHECK(pmem_map_file(path("a"), 4096, PMEM_FILE_CREATE | PMEM_FILE_EXCL, 0600, NULL, NULL) == NULL &&
	      errno == EEXIST, "CREATE|EXCL on an existing file");
	CHECK(strstr(pmem_errormsg(), "open") && strstr(pmem_errormsg(), "File exists"), "errormsg");
	errno = 0;
	CHECK(pmem_map_file(path("a"), 4096, 0, 0, NULL, NULL) == NULL && errno == EINVAL, "len without CREATE");
	errno = 0;
	CHECK(pmem_map_file(path("b"), 0, PMEM_FILE_CREATE, 0600, NULL, NULL) == NULL && errno == EINVAL,
	      "CREATE with len 0");
	errno = 0;
	CHECK(pmem_map_file(path("a"), 0, 1 << 6, 0, NULL, NULL) == NULL && errno == EINVAL, "unknown flag");
	errno = 0;
	CHECK(pmem_map_file(dir, 4096, PMEM_FILE_TMPFILE, 0600, NULL, NULL) == NULL && errno == EINVAL,
	      "TMPFILE without CREATE");
	errno = 0;
	CHECK(pmem_map_file(path("missing"), 0, 0, 0, NULL, NULL) == NULL && errno == ENOENT, "missing file");
	CHECK(strstr(pmem_errormsg(), "No such file"), "errormsg of a missing file");
	/* TMPFILE: an unnamed file in the directory. */
	len = 0;
	p = pmem_map_file(dir, 1 << 20, PMEM_FILE_CREATE | PMEM_FILE_TMPFILE, 0600, &len, NULL);
	CHECK(p != NULL && len == (1 << 20), "tmpfile");
	if (p) { p[0] = 1; pmem_unmap(p, len); }
	/* SPARSE: no blocks allocated. */
	p = pmem_map_file(path("sparse"), 64 << 20, PMEM_FILE_CREATE | PMEM_FILE_SPARSE, 0600, &len, NULL);
	CHECK(p != NULL && stat(path("sparse"), &st) == 0 && st.st_blocks < 1024, "sparse (%ld blocks)",
	      (long)st.st_blocks);
	if (p) pmem_unmap(p, len);
	/* A shrinking CREATE truncates. */
	p = pmem_map_file(path("a"), 8192, PMEM_FILE_CREATE, 0600, &len, NULL);
	CHECK(p != NULL && stat(path("a"), &st) == 0 && st.st_size == 8192, "create truncates");
	if (p) pmem_unmap(p, len);
}

static unsigned flag_sets[] = {
	0, PMEM_F_MEM_NODRAIN, PMEM_F_MEM_NONTEMPORAL, PMEM_F_MEM_TEMPORAL,
	PMEM_F_MEM_NONTEMPORAL | PMEM_F_MEM_WC, PMEM_F_MEM_WB, PMEM_F_MEM_NOFLUSH, PMEM_F_MEM_VALID_FLAGS,
};

static void copy_cases(void)
{
	size_t len;
	char *p = pmem_map_file(path("copy"), 1 << 20, PMEM_FILE_CREATE, 0600, &len, NULL);
	CHECK(p != NULL, "map for copies");
	if (!p)
		return;
	static char src[1 << 18], expect[1 << 18];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (char)(i * 7 + 3);
	size_t sizes[] = { 0, 1, 7, 8, 15, 16, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 65536, 100000 };
	for (size_t f = 0; f < sizeof(flag_sets) / sizeof(flag_sets[0]); f++)
		for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
			for (size_t align = 0; align < 64; align += 9) {
				size_t n = sizes[s];
				char *dst = p + 4096 + align;
				memset(p, 0x5a, 4096 + align + n + 4096);
				CHECK(pmem_memcpy(dst, src + align, n, flag_sets[f]) == dst, "memcpy returns dst");
				CHECK(memcmp(dst, src + align, n) == 0, "memcpy %zu at +%zu flags %#x", n, align, flag_sets[f]);
				CHECK(dst[-1] == 0x5a && dst[n] == 0x5a, "memcpy wrote outside (%zu, +%zu)", n, align);
				CHECK(pmem_memset(dst, 0x33 + (int)s, n, flag_sets[f]) == dst, "memset returns dst");
				memset(expect, 0x33 + (int)s, n);
				CHECK(memcmp(dst, expect, n) == 0 && dst[n] == 0x5a, "memset %zu at +%zu flags %#x", n, align,
				      flag_sets[f]);
				/* Overlapping moves both ways. */
				memcpy(dst, src, n + 32);
				CHECK(pmem_memmove(dst + 17, dst, n, flag_sets[f]) == dst + 17, "memmove returns dst");
				CHECK(memcmp(dst + 17, src, n) == 0, "memmove forward overlap %zu flags %#x", n, flag_sets[f]);
				memcpy(dst, src, n + 32);
				pmem_memmove(dst, dst + 17, n, flag_sets[f]);
				CHECK(memcmp(dst, src + 17, n) == 0, "memmove backward overlap %zu flags %#x", n, flag_sets[f]);
			}
	pmem_memcpy_persist(p, src, 1000);
	pmem_memmove_nodrain(p + 10, p, 500);
	pmem_memset_nodrain(p + 2000, 1, 300);
	pmem_drain();
	CHECK(memcmp(p + 10, src, 500) == 0 && p[2299] == 1, "persist/nodrain variants");
	pmem_unmap(p, len);
}

static void is_pmem_cases(int force)
{
	size_t len;
	int is_pmem;
	char *p = pmem_map_file(path("ip"), 2 << 20, PMEM_FILE_CREATE, 0600, &len, &is_pmem);
	CHECK(p != NULL, "map");
	if (force) {
		CHECK(is_pmem == 1 && pmem_is_pmem(p, len) == 1, "PMEM_IS_PMEM_FORCE=1");
		CHECK(pmem_is_pmem(p, 0) == 0, "len 0 is never pmem");
		char local[64];
		CHECK(pmem_is_pmem(local, sizeof(local)) == 1, "forced: any range");
	} else {
		char *anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		CHECK(pmem_is_pmem(anon, 4096) == 0, "anonymous memory is not pmem");
		CHECK(pmem_is_pmem(p, len) == is_pmem, "is_pmem agrees with map_file");
	}
	pmem_unmap(p, len);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	snprintf(dir, sizeof(dir), "%s", argv[1]);
	int force = argc > 2 && !strcmp(argv[2], "force");
	CHECK(strcmp(pmem_errormsg(), "") == 0, "errormsg starts empty");
	CHECK(pmem_check_version(PMEM_MAJOR_VERSION, PMEM_MINOR_VERSION) == NULL, "version ok");
	const char *v = pmem_check_version(2, 0);
	CHECK(v && !strcmp(v, "libpmem major version mismatch (need 2, found 1)"), "major mismatch: %s", v);
	v = pmem_check_version(1, 7);
	CHECK(v && !strcmp(v, "libpmem minor version mismatch (need 7, found 1)"), "minor mismatch: %s", v);
	CHECK(pmem_has_hw_drain() == 0, "hw drain");
	CHECK(pmem_has_auto_flush() >= -1, "auto flush");
	if (!force) {
		map_file_cases();
		copy_cases();
	}
	is_pmem_cases(force);
	char *p = malloc(4096);
	pmem_flush(p, 4096);
	pmem_deep_flush(p, 4096);
	pmem_drain();
	CHECK(pmem_msync(p, 0) == 0 || errno == ENOMEM, "msync of heap");
	free(p);
	printf(failures ? "%d FAILURES\n" : "ALL OK\n", failures);
	return failures != 0;
}
