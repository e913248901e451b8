/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * records.h -- the sequence-numbered 64-byte records the in-guest crash tests write and check.
 * Word 0 of record seq is seq; word i > 0 is (seq * C) ^ (i + salt), C odd, so every word alone
 * says which record it belongs to and a torn record is caught word by word.
 */
#ifndef VPM_RECORDS_H
#define VPM_RECORDS_H 1
#include <stdint.h>

#define RECORD_C 0x9e3779b97f4a7c15ULL

static inline uint64_t record_word(uint64_t seq, int i, uint64_t salt)
{
	return i == 0 ? seq : (seq * RECORD_C) ^ (uint64_t)(i + salt);
}

/* The sequence number word i encodes (record_word inverted: C is odd, so invertible mod 2^64). */
static inline uint64_t record_seq(uint64_t v, int i, uint64_t salt)
{
	uint64_t inv = RECORD_C;
	if (i == 0)
		return v;
	for (int k = 0; k < 6; k++)
		inv *= 2 - RECORD_C * inv;
	return (v ^ (uint64_t)(i + salt)) * inv;
}

/* Record r of a ring of n slots survived: each of its 8 words holds record r's word or that of
 * a later record in the same slot (written after the ack; a crash may tear it word by word). */
static inline int record_intact(const uint64_t *rec, uint64_t r, uint64_t n, uint64_t salt)
{
	for (int i = 0; i < 8; i++) {
		uint64_t q = record_seq(rec[i], i, salt);
		if (q < r || (q - r) % n != 0 || q - r > (1ULL << 40))
			return 0;
	}
	return 1;
}
#endif
