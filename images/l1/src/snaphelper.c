/*
 * /kvmlab/snaphelper: the parts of a snapshot that need system calls (driven by
 * images/l1/rootfs/kvmlab/snapshot). Built statically for arm64 with the L1 image; C, not
 * python3, because `resume` runs while every translation in QEMU is still cold.
 *
 * snaphelper sleepers: before the save, one process per CPU, pinned there, sleeping on
 *  CLOCK_REALTIME until 2100 (an hrtimer on that CPU's realtime base, for the kick below).
 *
 * snaphelper resume HOST_NS SEED: after a restore, before anything else runs:
 *  1. kick each CPU's timer: QEMU (7.2) does not re-arm the EL2 timers after a migration,
 *     and a VHE kernel ticks with one. Setting CLOCK_REALTIME past the wake-up time of the
 *     sleepers `snapshot save` left (one per CPU, on CLOCK_REALTIME until 2100) makes the
 *     kernel reprogram, with force, the timer of each CPU that holds one (clock_was_set()
 *     IPIs the other CPUs, so it is done once from each CPU);
 *  2. the wall clock: HOST_NS, the host's nanoseconds since the epoch;
 *  3. check that each CPU ticks (a 1 ms sleep on each);
 *  4. SEED (hex, up to 256 bytes) credited to the input pool and the CRNG reseeded, so
 *     labs restored from one snapshot do not draw the same random numbers.
 * Exits 0, or 1 with a message naming the step that failed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/random.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define KICK_SECONDS 4102444801LL /* 2100-01-01 + 1 s: past the sleepers' wake-up */

static void fail(const char *what)
{
	perror(what);
	exit(1);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Runs the caller on `cpu` alone. */
static int pin(int cpu)
{
	cpu_set_t one;

	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	return sched_setaffinity(0, sizeof(one), &one);
}

static int sleepers(void)
{
	struct timespec until = { KICK_SECONDS - 1, 0 };
	cpu_set_t all;

	if (sched_getaffinity(0, sizeof(all), &all))
		fail("sched_getaffinity");
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		pid_t pid;

		if (!CPU_ISSET(cpu, &all))
			continue;
		pid = fork();
		if (pid < 0)
			fail("fork");
		if (pid > 0)
			continue;
		setsid();
		if (pin(cpu))
			_exit(1);
		while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &until, NULL) != 0)
			;
		_exit(0);
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct {
		struct rand_pool_info info;
		unsigned char bytes[256];
	} pool;
	struct timespec kick = { KICK_SECONDS, 0 }, host, tick = { 0, 1000000 };
	cpu_set_t all;
	long long ns;
	size_t n;
	int cpu, fd;

	if (argc == 2 && !strcmp(argv[1], "sleepers"))
		return sleepers();
	if (argc != 4 || strcmp(argv[1], "resume")) {
		fprintf(stderr, "usage: %s sleepers | resume HOST_NS SEED\n", argv[0]);
		return 2;
	}
	argv++;
	ns = atoll(argv[1]);
	host.tv_sec = ns / 1000000000LL;
	host.tv_nsec = ns % 1000000000LL;
	n = strlen(argv[2]) / 2;
	if (n == 0 || n > sizeof(pool.bytes)) {
		fprintf(stderr, "SEED: 1 to %zu bytes in hex\n", sizeof(pool.bytes));
		return 2;
	}
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(argv[2][2 * i]), lo = hexval(argv[2][2 * i + 1]);

		if (hi < 0 || lo < 0) {
			fprintf(stderr, "SEED: not hex\n");
			return 2;
		}
		pool.bytes[i] = (unsigned char)(hi << 4 | lo);
	}

	if (sched_getaffinity(0, sizeof(all), &all))
		fail("sched_getaffinity");
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &all))
			continue;
		if (pin(cpu))
			fail("sched_setaffinity");
		if (clock_settime(CLOCK_REALTIME, &kick))
			fail("clock_settime (kick)");
	}
	if (clock_settime(CLOCK_REALTIME, &host))
		fail("clock_settime (host time)");
	for (cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &all))
			continue;
		if (pin(cpu) || nanosleep(&tick, NULL))
			fail("a 1 ms sleep");
	}
	sched_setaffinity(0, sizeof(all), &all);

	fd = open("/dev/random", O_WRONLY);
	if (fd < 0)
		fail("/dev/random");
	pool.info.entropy_count = (int)(n * 8);
	pool.info.buf_size = (int)n;
	if (ioctl(fd, RNDADDENTROPY, &pool))
		fail("RNDADDENTROPY");
	if (ioctl(fd, RNDRESEEDCRNG))
		fail("RNDRESEEDCRNG");
	close(fd);
	return 0;
}
