/*
 * osu_latency (oxmpi peer loop): ping-pong between ranks 0 and 1 with blocking
 * MPI_Send/MPI_Recv; prints the one-way latency in microseconds, elapsed / (2 * iters).
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_latency.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP   (defaults: 0:4194304, 10000, 1000;
 *        sizes above 8192 bytes run max(ITERS/10, 10) iterations and max(WARMUP/10, 2) warm-ups)
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LARGE 8192

struct opts {
    size_t min, max;
    long iters, warmup, window;
};

static const char *impl_name(char *buf, size_t n)
{
#if defined(OPEN_MPI)
    snprintf(buf, n, "Open MPI %d.%d.%d", OMPI_MAJOR_VERSION, OMPI_MINOR_VERSION,
             OMPI_RELEASE_VERSION);
#elif defined(MPICH_VERSION)
    snprintf(buf, n, "MPICH %s", MPICH_VERSION);
#else
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(v, &len);
    v[strcspn(v, "\n,")] = '\0';
    snprintf(buf, n, "%s", v);
#endif
    return buf;
}

static void die_usage(const char *name, int rank, int code)
{
    if (rank == 0)
        fprintf(stderr, "usage: %s [-m [MIN:]MAX] [-i ITERS] [-x WARMUP] [-W WINDOW]\n", name);
    MPI_Finalize();
    exit(code);
}

static int parse_num(const char *s, size_t *out)
{
    char *end;
    if (*s == '\0' || *s == '-')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0')
        return -1;
    *out = (size_t)v;
    return 0;
}

/* OSU-style flags; "-m 64", "-m 0:64", "-m:64", "-m 8:" and the glued "-m64" forms. */
static struct opts parse(int argc, char **argv, const char *name, int rank, size_t min,
                         long iters, long warmup)
{
    struct opts o = {min, 4u << 20, iters, warmup, 64};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char flag;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            die_usage(name, rank, 0);
        if (!strcmp(a, "--message-size")) flag = 'm';
        else if (!strcmp(a, "--iterations")) flag = 'i';
        else if (!strcmp(a, "--warmup")) flag = 'x';
        else if (!strcmp(a, "--window-size")) flag = 'W';
        else if (a[0] == '-' && a[1] && a[1] != '-') {
            flag = a[1];
            if (a[2]) val = a + 2;
        } else
            die_usage(name, rank, 2);
        if (!val) {
            if (i + 1 >= argc)
                die_usage(name, rank, 2);
            val = argv[++i];
        }
        size_t n;
        switch (flag) {
        case 'm': {
            char tmp[128];
            snprintf(tmp, sizeof tmp, "%s", val);
            char *colon = strchr(tmp, ':');
            if (colon) {
                *colon = '\0';
                if (tmp[0] && parse_num(tmp, &o.min)) die_usage(name, rank, 2);
                if (colon[1] && parse_num(colon + 1, &o.max)) die_usage(name, rank, 2);
            } else if (parse_num(tmp, &o.max))
                die_usage(name, rank, 2);
            break;
        }
        case 'i':
            if (parse_num(val, &n)) die_usage(name, rank, 2);
            o.iters = (long)n;
            break;
        case 'x':
            if (parse_num(val, &n)) die_usage(name, rank, 2);
            o.warmup = (long)n;
            break;
        case 'W':
            if (parse_num(val, &n)) die_usage(name, rank, 2);
            o.window = n ? (long)n : 1;
            break;
        default:
            die_usage(name, rank, 2);
        }
    }
    if (o.min > o.max || o.iters < 1)
        die_usage(name, rank, 2);
    return o;
}

/* Page-aligned buffer of n bytes (at least 1), written once so its pages are resident. */
static char *page_buffer(size_t n, int fill)
{
    void *p = NULL;
    if (n == 0) n = 1;
    if (posix_memalign(&p, (size_t)sysconf(_SC_PAGESIZE), n)) {
        perror("posix_memalign");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    memset(p, fill, n);
    return p;
}

/* Sizes run MIN (0 included), then the powers of two above it up to MAX. */
static size_t next_size(size_t s)
{
    size_t p = 1;
    while (p <= s) p <<= 1;
    return p;
}

static void iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    *iters = o->iters;
    *warmup = o->warmup;
    if (size > LARGE) {
        *iters = o->iters / 10 > 10 ? o->iters / 10 : 10;
        *warmup = o->warmup / 10 > 2 ? o->warmup / 10 : 2;
    }
}

int main(int argc, char **argv)
{
    int rank, nranks;
    char impl[160];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse(argc, argv, "osu_latency", rank, 0, 10000, 1000);
    if (nranks != 2) {
        if (rank == 0) fprintf(stderr, "osu_latency needs exactly 2 ranks\n");
        MPI_Finalize();
        return 1;
    }
    char *sbuf = page_buffer(o.max, 'a');
    char *rbuf = page_buffer(o.max, 'b');
    if (rank == 0) {
        printf("# OSU MPI Latency Test (oxmpi peer loop, %s)\n", impl_name(impl, sizeof impl));
        printf("# Size%24s\n", "Latency (us)");
        fflush(stdout);
    }
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        long iters, warmup;
        iters_for(&o, size, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (long i = 0; i < iters + warmup; i++) {
            if (i == warmup) start = MPI_Wtime();
            if (rank == 0) {
                MPI_Send(sbuf, (int)size, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
                MPI_Recv(rbuf, (int)size, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(rbuf, (int)size, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(sbuf, (int)size, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
            }
        }
        double us = (MPI_Wtime() - start) * 1e6 / (2.0 * (double)iters);
        if (rank == 0) {
            printf("%-10zu%18.2f\n", size, us);
            fflush(stdout);
        }
        sbuf[0]++;
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
