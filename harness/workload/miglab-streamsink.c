/*
 * miglab-streamsink: the receiving end of a QEMU pre-copy migration that only lists the pages it is sent.
 *
 * usage: miglab-streamsink LISTEN_FD PAGES_OUT BLOCKS_OUT
 *
 *   LISTEN_FD   a listening socket (unix or tcp) inherited from the harness; one connection is accepted
 *   PAGES_OUT   binary file: one little-endian uint64 per RAM page record, in stream order:
 *               bits 0..39 page number within its RAM block, bit 40 set for a zero page,
 *               bits 48..55 the block's index in BLOCKS_OUT
 *   BLOCKS_OUT  text file, written once the RAM setup section is read: "INDEX NAME USED_LENGTH" per line
 *
 * It parses the parts of QEMU's migration stream a RAM-only pre-copy sends (migration/savevm.c,
 * migration/ram.c): the file header, the configuration section, commands (return path open, ping),
 * the "ram" section's setup (RAM_SAVE_FLAG_MEM_SIZE and the block list) and its iterations
 * (ram_save_page / save_zero_page records: be64 offset|flags, the block name unless
 * RAM_SAVE_FLAG_CONTINUE, then 4096 bytes or one zero byte, up to RAM_SAVE_FLAG_EOS), each followed
 * by a section footer. It never writes to the socket, so it never sends the switchover-ack the source
 * waits for: the migration can iterate for ever. It stops at end of stream (migrate_cancel) or at the
 * first section it cannot parse (device state: QEMU went to switchover), exit 0 in both cases;
 * exit 1 on a malformed stream.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define QEMU_VM_FILE_MAGIC 0x5145564dU
#define QEMU_VM_EOF 0x00
#define QEMU_VM_SECTION_START 0x01
#define QEMU_VM_SECTION_PART 0x02
#define QEMU_VM_SECTION_END 0x03
#define QEMU_VM_SECTION_FULL 0x04
#define QEMU_VM_SUBSECTION 0x05
#define QEMU_VM_VMDESCRIPTION 0x06
#define QEMU_VM_CONFIGURATION 0x07
#define QEMU_VM_COMMAND 0x08
#define QEMU_VM_SECTION_FOOTER 0x7e

#define RAM_SAVE_FLAG_ZERO 0x02
#define RAM_SAVE_FLAG_MEM_SIZE 0x04
#define RAM_SAVE_FLAG_PAGE 0x08
#define RAM_SAVE_FLAG_EOS 0x10
#define RAM_SAVE_FLAG_CONTINUE 0x20
#define RAM_SAVE_FLAG_XBZRLE 0x40
#define RAM_SAVE_FLAG_MULTIFD_FLUSH 0x200
#define PAGE_SIZE 4096U
#define MAX_BLOCKS 64

static int fd;
static unsigned char buf[1 << 20];
static size_t buf_len, buf_pos;
static FILE *pages_out;
static char block_names[MAX_BLOCKS][256];
static int n_blocks, cur_block = -1;
static uint32_t ram_section = 0xffffffffU;
static uint64_t records;

static void done(int rc, const char *why)
{
	if (why)
		fprintf(stderr, "miglab-streamsink: %s after %llu page records\n", why, (unsigned long long)records);
	if (pages_out && fclose(pages_out) != 0) {
		perror("miglab-streamsink: writing pages");
		rc = 1;
	}
	exit(rc);
}

/* next n bytes of the stream into dst (NULL: skip); end of stream ends the program cleanly */
static void get(void *dst, size_t n)
{
	unsigned char *d = dst;
	while (n) {
		if (buf_pos == buf_len) {
			ssize_t got = read(fd, buf, sizeof buf);
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0)
				done(0, got < 0 ? "read error (source gone)" : "end of stream");
			buf_len = (size_t)got;
			buf_pos = 0;
		}
		size_t k = buf_len - buf_pos < n ? buf_len - buf_pos : n;
		if (d) {
			memcpy(d, buf + buf_pos, k);
			d += k;
		}
		buf_pos += k;
		n -= k;
	}
}

static unsigned get8(void)
{
	unsigned char b;
	get(&b, 1);
	return b;
}

static uint32_t get32(void)
{
	unsigned char b[4];
	get(b, 4);
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t get64(void)
{
	uint64_t hi = get32();
	return hi << 32 | get32();
}

static unsigned peek8(void)
{
	if (buf_pos == buf_len) {
		unsigned b = get8();
		buf_pos--; /* get8 refilled the buffer: the byte is still in it */
		return b;
	}
	return buf[buf_pos];
}

static void get_name(char *out)
{
	unsigned len = get8();
	get(out, len);
	out[len] = 0;
}

static int block_index(const char *name)
{
	for (int i = 0; i < n_blocks; i++)
		if (strcmp(block_names[i], name) == 0)
			return i;
	done(1, "page of an unknown RAM block");
	return -1;
}

static void footer(uint32_t section)
{
	if (get8() != QEMU_VM_SECTION_FOOTER || get32() != section)
		done(1, "missing section footer");
}

static void ram_setup(const char *blocks_path)
{
	uint64_t h = get64();
	if (!(h & RAM_SAVE_FLAG_MEM_SIZE))
		done(1, "ram setup without RAM_SAVE_FLAG_MEM_SIZE");
	uint64_t total = h & ~(uint64_t)(PAGE_SIZE - 1), seen = 0;
	FILE *f = fopen(blocks_path, "w");
	if (!f)
		done(1, "cannot write the block list");
	while (seen < total) {
		if (n_blocks == MAX_BLOCKS)
			done(1, "too many RAM blocks");
		get_name(block_names[n_blocks]);
		uint64_t used = get64();
		fprintf(f, "%d %s %llu\n", n_blocks, block_names[n_blocks], (unsigned long long)used);
		seen += used;
		n_blocks++;
	}
	fclose(f);
	/* anything else a capability adds before EOS (postcopy page sizes, ...) is not expected here */
	if (get64() != RAM_SAVE_FLAG_EOS)
		done(1, "unexpected data after the RAM block list (a capability this sink does not parse)");
}

static void ram_iterate(void)
{
	for (;;) {
		uint64_t h = get64();
		unsigned flags = (unsigned)(h & (PAGE_SIZE - 1));
		uint64_t offset = h & ~(uint64_t)(PAGE_SIZE - 1);
		if (flags & RAM_SAVE_FLAG_EOS)
			return;
		if (flags == RAM_SAVE_FLAG_MULTIFD_FLUSH)
			continue;
		if (!(flags & RAM_SAVE_FLAG_CONTINUE)) {
			char name[256];
			get_name(name);
			cur_block = block_index(name);
		}
		if (cur_block < 0)
			done(1, "RAM_SAVE_FLAG_CONTINUE before any block");
		uint64_t rec = offset / PAGE_SIZE | (uint64_t)cur_block << 48;
		if (flags & RAM_SAVE_FLAG_ZERO) {
			get8();
			rec |= 1ULL << 40;
		} else if (flags & RAM_SAVE_FLAG_PAGE) {
			get(NULL, PAGE_SIZE);
		} else if (flags & RAM_SAVE_FLAG_XBZRLE) {
			get8();
			unsigned len = get8() << 8;
			len |= get8();
			get(NULL, len);
		} else {
			done(1, "unknown RAM record flags");
		}
		if (fwrite(&rec, sizeof rec, 1, pages_out) != 1)
			done(1, "cannot write page records");
		records++;
	}
}

static void configuration(void)
{
	char name[512];
	uint32_t len = get32();
	if (len >= sizeof name)
		done(1, "machine name too long");
	get(name, len);
	while (peek8() == QEMU_VM_SUBSECTION) {
		char sub[256];
		get8();
		get_name(sub);
		get32(); /* version */
		if (strcmp(sub, "configuration/capabilities") == 0) {
			uint32_t n = get32();
			for (uint32_t i = 0; i < n; i++) {
				char cap[256];
				get_name(cap);
			}
		} else if (strcmp(sub, "configuration/uuid") == 0) {
			get(NULL, 16);
		} else {
			done(1, "unknown configuration subsection");
		}
	}
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: miglab-streamsink LISTEN_FD PAGES_OUT BLOCKS_OUT\n");
		return 2;
	}
	int lfd = atoi(argv[1]);
	fd = accept(lfd, NULL, NULL);
	if (fd < 0) {
		perror("miglab-streamsink: accept");
		return 1;
	}
	close(lfd);
	pages_out = fopen(argv[2], "wb");
	if (!pages_out) {
		perror("miglab-streamsink: PAGES_OUT");
		return 1;
	}
	if (get32() != QEMU_VM_FILE_MAGIC || get32() != 3)
		done(1, "not a QEMU migration stream (version 3)");
	for (;;) {
		unsigned type = get8();
		switch (type) {
		case QEMU_VM_CONFIGURATION:
			configuration();
			break;
		case QEMU_VM_COMMAND: {
			get8(); /* be16 command */
			get8();
			unsigned len = get8() << 8; /* be16 length */
			len |= get8();
			get(NULL, len);
			break;
		}
		case QEMU_VM_SECTION_START:
		case QEMU_VM_SECTION_FULL: {
			char idstr[256];
			uint32_t section = get32();
			get_name(idstr);
			get32(); /* instance */
			get32(); /* version */
			if (type != QEMU_VM_SECTION_START || strcmp(idstr, "ram") != 0)
				done(0, "device state: the source went to switchover");
			ram_section = section;
			ram_setup(argv[3]);
			footer(section);
			break;
		}
		case QEMU_VM_SECTION_PART:
		case QEMU_VM_SECTION_END: {
			uint32_t section = get32();
			if (section != ram_section)
				done(1, "iteration of a section that is not ram");
			ram_iterate();
			footer(section);
			break;
		}
		case QEMU_VM_EOF:
		case QEMU_VM_VMDESCRIPTION:
			done(0, "end of migration");
			break;
		default:
			done(1, "unknown section type");
		}
	}
}
