/*
 * miglab-load: a paced memory-writing workload that runs inside the guest.
 *
 * usage: miglab-load TOTAL_MIB SPAN_MIB RATE PATTERN SEED [PARAM]
 *
 *   TOTAL_MIB  size of the region it allocates and fills with non-zero data (one counter per page,
 *              so QEMU sends every page of it in full); 0 = MemAvailable minus a reserve
 *   SPAN_MIB   hotcold: the hot set (the first SPAN_MIB of the region);
 *              uniform/random/zipf/seq: the part of the region written; 0 = all of it
 *   RATE       page writes per second (may be fractional; 0 only for idle)
 *   PATTERN    uniform | random | hotcold | zipf | seq | idle  (semantics: sim/workload.py);
 *              idle fills the region, then only reports (a used guest that does not write)
 *   SEED       seed for the permutation and the random picks
 *   PARAM      hotcold: hot_share (default 0.9); zipf: exponent s (default 1.1)
 *
 * Every write increments a 64-bit counter in the chosen page, so each write
 * changes the page's content and a content-diff collector sees it.
 *
 * Console output (stdout, one line each, line-buffered):
 *   miglab-load start total_mib=T span_mib=S rate=R pattern=P seed=N param=X page_size=4096
 *   miglab-load ready touch_s=F
 *   miglab-load t=12.000 pages=5000 rate=5000.0 total=60000 skipped=0
 * The last form is printed about once per second: t = seconds since "ready"
 * (guest CLOCK_MONOTONIC), pages = writes since the previous line, rate =
 * pages divided by the exact time since the previous line, total = writes so far.
 *
 * Pacing: the writer keeps "writes done" equal to floor(RATE * elapsed), in
 * batches, sleeping to the next due write in between. A backlog of more than
 * one second (e.g. the guest was paused) is dropped and counted in
 * "skipped" (cumulative) so a pause does not turn into a burst.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE_SIZE 4096UL
#define RESERVE_MIB 48UL

enum pattern { P_UNIFORM, P_RANDOM, P_HOTCOLD, P_ZIPF, P_SEQ, P_IDLE };

static uint64_t rng_state[4];

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** */
static inline uint64_t rng_next(void)
{
	uint64_t *s = rng_state;
	uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return result;
}

static inline double rng_unit(void) { return (double)(rng_next() >> 11) * 0x1.0p-53; }

/* uniform in [0, n) without modulo bias worth caring about at these sizes */
static inline uint64_t rng_below(uint64_t n) { return (uint64_t)(((unsigned __int128)rng_next() * n) >> 64); }

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
	struct timespec ts;
	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static unsigned long mem_available_mib(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long kib = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %lu kB", &kib) == 1)
			break;
	fclose(f);
	return kib / 1024;
}

static int parse_pattern(const char *s, enum pattern *p)
{
	static const char *names[] = {"uniform", "random", "hotcold", "zipf", "seq", "idle"};
	for (int i = 0; i < 6; i++)
		if (strcmp(s, names[i]) == 0) {
			*p = (enum pattern)i;
			return 0;
		}
	return -1;
}

static void usage_exit(const char *why)
{
	fprintf(stderr, "miglab-load error: %s\n"
		"usage: miglab-load TOTAL_MIB SPAN_MIB RATE uniform|random|hotcold|zipf|seq|idle SEED [PARAM]\n", why);
	printf("miglab-load error: %s\n", why);
	exit(2);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 6 || argc > 7)
		usage_exit("wrong number of arguments");

	char *end;
	unsigned long total_mib = strtoul(argv[1], &end, 10);
	if (*end)
		usage_exit("TOTAL_MIB is not an integer");
	unsigned long span_mib = strtoul(argv[2], &end, 10);
	if (*end)
		usage_exit("SPAN_MIB is not an integer");
	double rate = strtod(argv[3], &end);
	enum pattern pat;
	if (parse_pattern(argv[4], &pat))
		usage_exit("unknown PATTERN");
	if (*end || !isfinite(rate) || !(rate > 0 || (pat == P_IDLE && rate == 0)))
		usage_exit("RATE must be a positive number of pages per second (0 only for idle)");
	uint64_t seed = strtoull(argv[5], &end, 10);
	if (*end)
		usage_exit("SEED is not an integer");
	double param = pat == P_HOTCOLD ? 0.9 : 1.1;
	if (argc == 7) {
		param = strtod(argv[6], &end);
		if (*end || !isfinite(param))
			usage_exit("PARAM is not a number");
	}
	if (pat == P_HOTCOLD && (param < 0 || param > 1))
		usage_exit("hot_share must be within [0, 1]");
	if (pat == P_ZIPF && param <= 0)
		usage_exit("zipf exponent s must be positive");

	if (total_mib == 0) {
		unsigned long avail = mem_available_mib();
		if (avail <= RESERVE_MIB + 8)
			usage_exit("not enough MemAvailable for an automatic size");
		total_mib = avail - RESERVE_MIB;
	}
	if (span_mib == 0 || span_mib > total_mib)
		span_mib = pat == P_HOTCOLD ? total_mib / 8 : total_mib;
	if (span_mib == 0)
		usage_exit("region too small");

	uint64_t n_total = total_mib * (1024 * 1024 / PAGE_SIZE);
	uint64_t n_span = span_mib * (1024 * 1024 / PAGE_SIZE);
	uint64_t n_cold = n_total - n_span;

	printf("miglab-load start total_mib=%lu span_mib=%lu rate=%.3f pattern=%s seed=%llu param=%g page_size=%lu\n",
	       total_mib, span_mib, rate, argv[4], (unsigned long long)seed, param, PAGE_SIZE);

	uint64_t sm = seed;
	for (int i = 0; i < 4; i++)
		rng_state[i] = splitmix64(&sm);

	double t_touch = now_s();
	unsigned char *base = malloc(n_total * PAGE_SIZE + PAGE_SIZE);
	if (!base)
		usage_exit("malloc failed (TOTAL_MIB too large for the guest)");
	/* page-align so "page i" is a real guest page */
	base = (unsigned char *)(((uintptr_t)base + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1));
	for (uint64_t i = 0; i < n_total; i++)
		*(volatile uint64_t *)(base + i * PAGE_SIZE) = i + 1;

	/* A fixed permutation of the span: visiting order for uniform, rank scatter for zipf. */
	uint32_t *perm = NULL;
	double *cdf = NULL;
	if (pat == P_UNIFORM || pat == P_ZIPF) {
		perm = malloc(n_span * sizeof *perm);
		if (!perm)
			usage_exit("malloc failed (permutation)");
		for (uint64_t i = 0; i < n_span; i++)
			perm[i] = (uint32_t)i;
		for (uint64_t i = n_span - 1; i > 0; i--) {
			uint64_t j = rng_below(i + 1);
			uint32_t t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
	}
	if (pat == P_ZIPF) {
		cdf = malloc(n_span * sizeof *cdf);
		if (!cdf)
			usage_exit("malloc failed (zipf table)");
		double acc = 0;
		for (uint64_t i = 0; i < n_span; i++)
			cdf[i] = (acc += pow((double)(i + 1), -param));
		for (uint64_t i = 0; i < n_span; i++)
			cdf[i] /= acc;
	}
	printf("miglab-load ready touch_s=%.3f\n", now_s() - t_touch);

	if (pat == P_IDLE) {
		/* the data stays resident and unchanged; report like the writers so harnesses see progress */
		const double t_idle = now_s();
		for (;;) {
			sleep_s(1.0);
			printf("miglab-load t=%.3f pages=0 rate=0.0 total=0 skipped=0\n", now_s() - t_idle);
		}
	}

	uint64_t cursor = 0; /* uniform / seq position */
	uint64_t done = 0, skipped = 0, last_done = 0;
	const double t0 = now_s();
	double last_report = t0, next_report = t0 + 1.0;
	const double backlog_max = rate > 1.0 ? rate : 1.0; /* one second's worth */
	const uint64_t batch_max = rate / 1000.0 > 64.0 ? (uint64_t)(rate / 1000.0) : 64;

	for (;;) {
		double now = now_s();
		double due_f = (now - t0) * rate;
		uint64_t due = (uint64_t)due_f - skipped;
		if (due > done && (double)(due - done) > backlog_max) {
			uint64_t drop = due - done - (uint64_t)backlog_max;
			skipped += drop;
			due -= drop;
		}
		uint64_t n = due > done ? due - done : 0;
		if (n > batch_max)
			n = batch_max; /* re-check the clock and the report time every batch */
		for (uint64_t k = 0; k < n; k++) {
			uint64_t page;
			switch (pat) {
			case P_UNIFORM:
				page = perm[cursor];
				if (++cursor == n_span)
					cursor = 0;
				break;
			case P_RANDOM:
				page = rng_below(n_span);
				break;
			case P_HOTCOLD:
				if (n_cold == 0 || rng_unit() < param)
					page = rng_below(n_span);
				else
					page = n_span + rng_below(n_cold);
				break;
			case P_ZIPF: {
				double u = rng_unit();
				uint64_t lo = 0, hi = n_span - 1;
				while (lo < hi) {
					uint64_t mid = (lo + hi) / 2;
					if (cdf[mid] < u)
						lo = mid + 1;
					else
						hi = mid;
				}
				page = perm[lo];
				break;
			}
			case P_SEQ:
			default:
				page = cursor;
				if (++cursor == n_span)
					cursor = 0;
				break;
			}
			(*(volatile uint64_t *)(base + page * PAGE_SIZE))++;
		}
		done += n;

		now = now_s();
		if (now >= next_report) {
			double dt = now - last_report;
			printf("miglab-load t=%.3f pages=%llu rate=%.1f total=%llu skipped=%llu\n", now - t0,
			       (unsigned long long)(done - last_done), (double)(done - last_done) / dt,
			       (unsigned long long)done, (unsigned long long)skipped);
			last_done = done;
			last_report = now;
			next_report += 1.0;
			if (next_report < now)
				next_report = now + 1.0;
		}
		if (n < batch_max) {
			/* caught up: sleep until the next write is due (or the next report) */
			double next_due = t0 + (double)(done + skipped + 1) / rate;
			double wake = next_due < next_report ? next_due : next_report;
			double gap = wake - now_s();
			/* at high rates, batch at least 1 ms of writes rather than sleep per write */
			if (wake == next_due && gap < 0.001)
				gap = 0.001;
			sleep_s(gap > 0.05 ? 0.05 : gap);
		}
	}
}
