/*
 * Shared by the oxmpi peer loops (osu_latency.c, osu_bw.c, osu_bibw.c, osu_multi_lat.c): OSU's
 * flags (-m [MIN:]MAX, -i, -x, -W), the size sequence, iteration counts for large messages,
 * page-aligned buffers and the library's name for the header line. Written for the oxmpi
 * project; not OSU's source code.
 */
#ifndef OXMPI_PEER_COMMON_H
#define OXMPI_PEER_COMMON_H

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

static inline const char *impl_name(char *buf, size_t n)
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
/* The bandwidth tests cut large-message iterations further, as bench/src/bin/osu_bw.rs does. */
static inline void bw_iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    iters_for(o, size, iters, warmup);
    if (size > LARGE)
        *iters = *iters * 2 / 10 > 10 ? *iters * 2 / 10 : 10;
}

/* Ends the run (returns 0 after MPI_Finalize) unless ok; rank 0 says what is needed. */
static inline int require(int rank, int ok, const char *name, const char *what)
{
    if (ok)
        return 1;
    if (rank == 0)
        fprintf(stderr, "%s needs %s\n", name, what);
    MPI_Finalize();
    return 0;
}

/* The OSU-shaped header lines. */
static inline void header(const char *title, const char *column)
{
    char impl[160];
    printf("# %s (oxmpi peer loop, %s)\n", title, impl_name(impl, sizeof impl));
    printf("# Size%24s\n", column);
    fflush(stdout);
}

#endif
    return buf;
}

static inline void die_usage(const char *name, int rank, int code)
{
    if (rank == 0)
        fprintf(stderr, "usage: %s [-m [MIN:]MAX] [-i ITERS] [-x WARMUP] [-W WINDOW]\n", name);
    MPI_Finalize();
    exit(code);
}

static inline int parse_num(const char *s, size_t *out)
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
static inline struct opts parse(int argc, char **argv, const char *name, int rank, size_t min,
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
static inline char *page_buffer(size_t n, int fill)
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
static inline size_t next_size(size_t s)
{
    size_t p = 1;
    while (p <= s) p <<= 1;
    return p;
}

static inline void iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    *iters = o->iters;
    *warmup = o->warmup;
    if (size > LARGE) {
        *iters = o->iters / 10 > 10 ? o->iters / 10 : 10;
        *warmup = o->warmup / 10 > 2 ? o->warmup / 10 : 2;
    }
}

/* The bandwidth tests cut large-message iterations further, as bench/src/bin/osu_bw.rs does. */
static inline void bw_iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    iters_for(o, size, iters, warmup);
    if (size > LARGE)
        *iters = *iters * 2 / 10 > 10 ? *iters * 2 / 10 : 10;
}

/* Ends the run (returns 0 after MPI_Finalize) unless ok; rank 0 says what is needed. */
static inline int require(int rank, int ok, const char *name, const char *what)
{
    if (ok)
        return 1;
    if (rank == 0)
        fprintf(stderr, "%s needs %s\n", name, what);
    MPI_Finalize();
    return 0;
}

/* The OSU-shaped header lines. */
static inline void header(const char *title, const char *column)
{
    char impl[160];
    printf("# %s (oxmpi peer loop, %s)\n", title, impl_name(impl, sizeof impl));
    printf("# Size%24s\n", column);
    fflush(stdout);
}

#endif
