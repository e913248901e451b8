/* SPDX-License-Identifier: BSD-3-Clause OR MIT */
/* A libpmemobj program: create a pool, store a string in a transaction, reopen, verify. */
#include <stdio.h>
#include <string.h>
#include <libpmemobj.h>

POBJ_LAYOUT_BEGIN(vpm_test);
POBJ_LAYOUT_ROOT(vpm_test, struct root);
POBJ_LAYOUT_END(vpm_test);

struct root {
	char msg[64];
	int count;
};

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	PMEMobjpool *pop = pmemobj_create(argv[1], POBJ_LAYOUT_NAME(vpm_test), PMEMOBJ_MIN_POOL, 0600);
	if (!pop) {
		printf("create: %s\n", pmemobj_errormsg());
		return 1;
	}
	TOID(struct root) root = POBJ_ROOT(pop, struct root);
	for (int i = 0; i < 100; i++) {
		TX_BEGIN(pop) {
			TX_ADD(root);
			snprintf(D_RW(root)->msg, sizeof(D_RW(root)->msg), "hello from pv-libpmem %d", i);
			D_RW(root)->count = i + 1;
		} TX_END
	}
	pmemobj_close(pop);
	pop = pmemobj_open(argv[1], POBJ_LAYOUT_NAME(vpm_test));
	if (!pop) {
		printf("open: %s\n", pmemobj_errormsg());
		return 1;
	}
	root = POBJ_ROOT(pop, struct root);
	int ok = D_RO(root)->count == 100 && !strcmp(D_RO(root)->msg, "hello from pv-libpmem 99");
	printf(ok ? "OBJ OK %s\n" : "OBJ FAIL %s\n", D_RO(root)->msg);
	pmemobj_close(pop);
	return !ok;
}
