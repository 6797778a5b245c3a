/*
 * reload-probe: two libiscsi sessions held open on one target while the
 * ISU daemon's config changes under them (interop/reload drives it).
 *
 *   reload-probe URL STEP LUN1_BLOCKS LUN0_GROWN_BLOCKS
 *
 * URL is iscsi://HOST:PORT/IQN/0. STEP is a command run (with system()) as
 * "STEP add", "STEP resize", "STEP remove" and "STEP bad": each changes the
 * config, sends SIGHUP and returns once the daemon has logged the outcome.
 * Checks, on each session:
 *   add:    TEST UNIT READY on LUN 0 meets REPORTED LUNS DATA HAS CHANGED,
 *           REPORT LUNS lists 0 and 1, LUN 1 has LUN1_BLOCKS blocks;
 *   resize: TEST UNIT READY on LUN 0 meets CAPACITY DATA HAS CHANGED, and
 *           READ CAPACITY(16) shows LUN0_GROWN_BLOCKS;
 *   bad:    a refused config changes nothing (no attention, same LUNs);
 *   remove: REPORTED LUNS DATA HAS CHANGED again, REPORT LUNS lists 0 only,
 *           LUN 1 answers LOGICAL UNIT NOT SUPPORTED.
 * Exits 0 when every check passed; prints what failed otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

static int failures, checks;

#define CHECK(cond, ...)                                        \
	do {                                                    \
		checks++;                                       \
		if (!(cond)) {                                  \
			failures++;                             \
			fprintf(stderr, "reload-probe: FAILED: "); \
			fprintf(stderr, __VA_ARGS__);           \
			fprintf(stderr, "\n");                  \
		}                                               \
	} while (0)

struct session {
	const char *name;
	struct iscsi_context *iscsi;
};

static int connect_session(struct session *s, const char *url_text, const char *initiator)
{
	struct iscsi_url *url;

	s->iscsi = iscsi_create_context(initiator);
	if (s->iscsi == NULL)
		return -1;
	url = iscsi_parse_full_url(s->iscsi, url_text);
	if (url == NULL) {
		fprintf(stderr, "reload-probe: bad URL %s: %s\n", url_text,
			iscsi_get_error(s->iscsi));
		return -1;
	}
	iscsi_set_targetname(s->iscsi, url->target);
	iscsi_set_session_type(s->iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(s->iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	/* Logs in and clears the POWER ON unit attention with TEST UNIT READY. */
	if (iscsi_full_connect_sync(s->iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "reload-probe: %s: login failed: %s\n", s->name,
			iscsi_get_error(s->iscsi));
		iscsi_destroy_url(url);
		return -1;
	}
	iscsi_destroy_url(url);
	return 0;
}

/* TEST UNIT READY: 0 for GOOD, else (sense key << 16) | ASC/ASCQ, -1 when
 * no answer came. */
static long tur(struct session *s, int lun)
{
	struct scsi_task *t = iscsi_testunitready_sync(s->iscsi, lun);
	long r;

	if (t == NULL)
		return -1;
	if (t->status == SCSI_STATUS_GOOD)
		r = 0;
	else if (t->status == SCSI_STATUS_CHECK_CONDITION)
		r = ((long)t->sense.key << 16) | (t->sense.ascq & 0xffff);
	else
		r = -1;
	scsi_free_scsi_task(t);
	return r;
}

#define UA(ascq) (((long)SCSI_SENSE_UNIT_ATTENTION << 16) | (ascq))
/* Not named in libiscsi 1.19's header. */
#define REPORTED_LUNS_DATA_HAS_CHANGED 0x3f0e

/* The LUNs REPORT LUNS lists, as a bit mask of LUNs 0..31; -1 on error. */
static long report_luns(struct session *s)
{
	struct scsi_task *t = iscsi_reportluns_sync(s->iscsi, 0, 512);
	struct scsi_reportluns_list *l;
	long mask = 0;
	uint32_t i;

	if (t == NULL || t->status != SCSI_STATUS_GOOD) {
		if (t)
			scsi_free_scsi_task(t);
		return -1;
	}
	l = scsi_datain_unmarshall(t);
	if (l == NULL) {
		scsi_free_scsi_task(t);
		return -1;
	}
	for (i = 0; i < l->num; i++)
		if (l->luns[i] < 32)
			mask |= 1L << l->luns[i];
	scsi_free_scsi_task(t);
	return mask;
}

/* Capacity in blocks from READ CAPACITY(16); 0 on error. */
static uint64_t capacity(struct session *s, int lun)
{
	struct scsi_task *t = iscsi_readcapacity16_sync(s->iscsi, lun);
	struct scsi_readcapacity16 *rc;
	uint64_t n = 0;

	if (t == NULL)
		return 0;
	if (t->status == SCSI_STATUS_GOOD) {
		rc = scsi_datain_unmarshall(t);
		if (rc)
			n = rc->returned_lba + 1;
	}
	scsi_free_scsi_task(t);
	return n;
}

static int step(const char *cmd, const char *what)
{
	char line[4096];

	snprintf(line, sizeof(line), "%s %s", cmd, what);
	if (system(line) != 0) {
		fprintf(stderr, "reload-probe: step '%s' failed\n", what);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct session s[2] = {{"session A", NULL}, {"session B", NULL}};
	uint64_t lun1_blocks, grown;
	int i;

	if (argc != 5) {
		fprintf(stderr, "usage: %s URL STEP LUN1_BLOCKS LUN0_GROWN_BLOCKS\n", argv[0]);
		return 2;
	}
	lun1_blocks = strtoull(argv[3], NULL, 0);
	grown = strtoull(argv[4], NULL, 0);
	if (connect_session(&s[0], argv[1], "iqn.2026-01.org.opie.test:reload-a") ||
	    connect_session(&s[1], argv[1], "iqn.2026-01.org.opie.test:reload-b"))
		return 1;
	for (i = 0; i < 2; i++) {
		CHECK(tur(&s[i], 0) == 0, "%s: LUN 0 not ready at start", s[i].name);
		CHECK(report_luns(&s[i]) == 0x1, "%s: LUNs at start are not {0}", s[i].name);
	}

	if (step(argv[2], "add"))
		return 1;
	for (i = 0; i < 2; i++) {
		long r = tur(&s[i], 0);
		CHECK(r == UA(REPORTED_LUNS_DATA_HAS_CHANGED),
		      "%s: after a LUN was added, TEST UNIT READY gave %#lx, not REPORTED LUNS DATA HAS CHANGED",
		      s[i].name, r);
		CHECK(tur(&s[i], 0) == 0, "%s: the attention came twice", s[i].name);
		CHECK(report_luns(&s[i]) == 0x3, "%s: REPORT LUNS does not list 0 and 1", s[i].name);
		CHECK(tur(&s[i], 1) == 0, "%s: the new LUN 1 is not ready", s[i].name);
		CHECK(capacity(&s[i], 1) == lun1_blocks, "%s: LUN 1 capacity is not %llu blocks",
		      s[i].name, (unsigned long long)lun1_blocks);
	}

	if (step(argv[2], "resize"))
		return 1;
	for (i = 0; i < 2; i++) {
		long r = tur(&s[i], 0);
		CHECK(r == UA(SCSI_SENSE_ASCQ_CAPACITY_DATA_HAS_CHANGED),
		      "%s: after LUN 0 grew, TEST UNIT READY gave %#lx, not CAPACITY DATA HAS CHANGED",
		      s[i].name, r);
		CHECK(capacity(&s[i], 0) == grown, "%s: LUN 0 capacity is not %llu blocks",
		      s[i].name, (unsigned long long)grown);
		CHECK(tur(&s[i], 1) == 0, "%s: LUN 1 got an attention from LUN 0's resize", s[i].name);
	}

	if (step(argv[2], "bad"))
		return 1;
	for (i = 0; i < 2; i++) {
		CHECK(tur(&s[i], 0) == 0, "%s: a refused config raised an attention", s[i].name);
		CHECK(report_luns(&s[i]) == 0x3, "%s: a refused config changed the LUNs", s[i].name);
	}

	if (step(argv[2], "remove"))
		return 1;
	for (i = 0; i < 2; i++) {
		long r = tur(&s[i], 0);
		CHECK(r == UA(REPORTED_LUNS_DATA_HAS_CHANGED),
		      "%s: after a LUN was removed, TEST UNIT READY gave %#lx, not REPORTED LUNS DATA HAS CHANGED",
		      s[i].name, r);
		CHECK(report_luns(&s[i]) == 0x1, "%s: REPORT LUNS does not list 0 only", s[i].name);
		r = tur(&s[i], 1);
		CHECK(r == (((long)SCSI_SENSE_ILLEGAL_REQUEST << 16) | SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED),
		      "%s: the removed LUN 1 gave %#lx, not LOGICAL UNIT NOT SUPPORTED", s[i].name, r);
	}

	for (i = 0; i < 2; i++) {
		iscsi_logout_sync(s[i].iscsi);
		iscsi_destroy_context(s[i].iscsi);
	}
	printf("reload-probe: %d checks, %d passed, %d failed\n", checks, checks - failures, failures);
	return failures ? 1 : 0;
}
