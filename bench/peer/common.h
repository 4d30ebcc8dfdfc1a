/*
 * Shared by the oxmpi peer loops (the point-to-point osu_latency.c, osu_bw.c, osu_bibw.c,
 * osu_multi_lat.c and the collective osu_barrier.c ... osu_iallreduce.c): OSU's flags
 * (-m [MIN:]MAX, -i, -x, -W; -f for the collectives, -t for the nonblocking ones), the size
 * sequence, iteration counts for large messages, page-aligned buffers, the library's name for
 * the header line, and for the collectives OSU's timing loop, its avg/min/max over the ranks and
 * its overlap figure. Written for the oxmpi project; not OSU's source code.
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
    int iters_given, warmup_given; /* -i / -x given: they hold for large messages too (OSU's way) */
    int full;        /* -f: collectives also print min/max latency and iterations */
    long test_calls; /* -t: MPI_Test calls spread over the dummy compute (nonblocking tests) */
};

/* Which flags a benchmark takes: point-to-point (-W), collective (-f) or nonblocking
 * collective (-f, -t); -m, -i and -x are common to all. */
enum flag_set { FLAGS_P2P, FLAGS_COLL, FLAGS_NBC };

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
#endif
    return buf;
}

static inline void die_usage_for(const char *name, int rank, int code, enum flag_set set)
{
    if (rank == 0) {
        const char *extra = set == FLAGS_P2P    ? " [-W WINDOW]"
                            : set == FLAGS_COLL ? " [-f]"
                                                : " [-f] [-t CALLS]";
        fprintf(stderr, "usage: %s [-m [MIN:]MAX] [-i ITERS] [-x WARMUP]%s\n", name, extra);
    }
    MPI_Finalize();
    exit(code);
}

static inline void die_usage(const char *name, int rank, int code)
{
    die_usage_for(name, rank, code, FLAGS_P2P);
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

/* OSU-style flags of the given set; "-m 64", "-m 0:64", "-m:64", "-m 8:" and the glued "-m64"
 * forms. */
static inline struct opts parse_flags(int argc, char **argv, const char *name, int rank,
                                      size_t min, long iters, long warmup, enum flag_set set)
{
    struct opts o = {.min = min, .max = 4u << 20, .iters = iters, .warmup = warmup,
                     .window = 64, .full = 0, .test_calls = 0};
#define USAGE(code) die_usage_for(name, rank, code, set)
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char flag;
        if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            USAGE(0);
        if (!strcmp(a, "--message-size")) flag = 'm';
        else if (!strcmp(a, "--iterations")) flag = 'i';
        else if (!strcmp(a, "--warmup")) flag = 'x';
        else if (!strcmp(a, "--window-size")) flag = 'W';
        else if (!strcmp(a, "--full")) flag = 'f';
        else if (!strcmp(a, "--num_test_calls")) flag = 't';
        else if (a[0] == '-' && a[1] && a[1] != '-') {
            flag = a[1];
            if (a[2]) val = a + 2;
        } else
            USAGE(2);
        if (flag == 'f') {
            if (set == FLAGS_P2P || val)
                USAGE(2);
            o.full = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc)
                USAGE(2);
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
                if (tmp[0] && parse_num(tmp, &o.min)) USAGE(2);
                if (colon[1] && parse_num(colon + 1, &o.max)) USAGE(2);
            } else if (parse_num(tmp, &o.max))
                USAGE(2);
            break;
        }
        case 'i':
            if (parse_num(val, &n)) USAGE(2);
            o.iters = (long)n;
            o.iters_given = 1;
            break;
        case 'x':
            if (parse_num(val, &n)) USAGE(2);
            o.warmup = (long)n;
            o.warmup_given = 1;
            break;
        case 'W':
            if (set != FLAGS_P2P || parse_num(val, &n)) USAGE(2);
            o.window = n ? (long)n : 1;
            break;
        case 't':
            if (set != FLAGS_NBC || parse_num(val, &n)) USAGE(2);
            o.test_calls = (long)n;
            break;
        default:
            USAGE(2);
        }
    }
    if (o.min > o.max || o.iters < 1)
        USAGE(2);
#undef USAGE
    return o;
}

/* The point-to-point tests' flags: -m, -i, -x, -W. */
static inline struct opts parse(int argc, char **argv, const char *name, int rank, size_t min,
                                long iters, long warmup)
{
    return parse_flags(argc, argv, name, rank, min, iters, warmup, FLAGS_P2P);
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

/* Page-aligned buffer of n floats (at least 1), every element set to value. */
static inline float *float_buffer(size_t n, float value)
{
    float *p = (float *)page_buffer((n ? n : 1) * sizeof(float), 0);
    for (size_t i = 0; i < (n ? n : 1); i++)
        p[i] = value;
    return p;
}

/* Sizes run MIN (0 included), then the powers of two above it up to MAX. */
static inline size_t next_size(size_t s)
{
    size_t p = 1;
    while (p <= s) p <<= 1;
    return p;
}

/* Large messages run a tenth of the default counts; what -i and -x set holds for every size, as
 * OSU's flags do (bench/src/lib.rs, Options::iters_for). */
static inline void iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    *iters = o->iters;
    *warmup = o->warmup;
    if (size > LARGE && !o->iters_given) *iters = o->iters / 10 > 10 ? o->iters / 10 : 10;
    if (size > LARGE && !o->warmup_given) *warmup = o->warmup / 10 > 2 ? o->warmup / 10 : 2;
}

/* The bandwidth tests cut large-message iterations further without -i, as
 * bench/src/bin/osu_bw.rs does. */
static inline void bw_iters_for(const struct opts *o, size_t size, long *iters, long *warmup)
{
    iters_for(o, size, iters, warmup);
    if (size > LARGE && !o->iters_given)
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

/* ---- collectives ---------------------------------------------------------------------------
 *
 * OSU's collective latency tests: per size, a barrier, then warm-up + timed calls, each call
 * timed on its own and followed by an untimed MPI_Barrier; a rank's latency is its timed total
 * over the timed calls; rank 0 prints the average over the ranks (with -f also the minimum,
 * maximum and iteration count), from three MPI_Reduce calls.
 */

/* The size a reduction test runs for `size` bytes: whole floats (0: skip this size). */
static inline size_t float_bytes(size_t size)
{
    return size / sizeof(float) * sizeof(float);
}

/* Times `call` (a statement) OSU's way: warmup + iters calls, each timed alone and followed by
 * an untimed barrier; stores this rank's microseconds per call in `us`. */
#define TIME_COLL(us, iters, warmup, call)                                                    \
    do {                                                                                      \
        double total_ = 0.0;                                                                  \
        for (long i_ = 0; i_ < (iters) + (warmup); i_++) {                                    \
            double t0_ = MPI_Wtime();                                                         \
            call;                                                                             \
            double t1_ = MPI_Wtime();                                                         \
            if (i_ >= (warmup))                                                               \
                total_ += t1_ - t0_;                                                          \
            MPI_Barrier(MPI_COMM_WORLD);                                                      \
        }                                                                                     \
        (us) = total_ * 1e6 / (double)(iters);                                                \
    } while (0)

/* The collective tests' header: title (library, rank count), then "# Size  Avg Latency(us)"
 * (OSU's %-10s%18s; with -f also Min, Max, Iterations). sized = 0: no size column (barrier). */
static inline void header_coll(const char *title, int nranks, const struct opts *o, int sized)
{
    char impl[160];
    printf("# %s (oxmpi peer loop, %s), %d ranks\n", title, impl_name(impl, sizeof impl), nranks);
    if (sized)
        printf("%-10s%18s", "# Size", "Avg Latency(us)");
    else
        printf("# Avg Latency(us)");
    if (o->full)
        printf("%18s%18s%12s", "Min Latency(us)", "Max Latency(us)", "Iterations");
    printf("\n");
    fflush(stdout);
}

/* Reduces this rank's latency `us` to the average, minimum and maximum over the ranks; rank 0
 * prints one line (size < 0: no size column, as osu_barrier). Collective: every rank calls it. */
static inline void report_coll(int rank, int nranks, long long size, double us, long iters,
                               const struct opts *o)
{
    double sum = 0.0, min = 0.0, max = 0.0;
    MPI_Reduce(&us, &min, 1, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
    MPI_Reduce(&us, &max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(&us, &sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank != 0)
        return;
    if (size >= 0)
        printf("%-10lld%18.2f", size, sum / nranks);
    else
        printf("%17.2f", sum / nranks);
    if (o->full)
        printf("%18.2f%18.2f%12ld", min, max, iters);
    printf("\n");
    fflush(stdout);
}

/* ---- nonblocking collectives ----------------------------------------------------------------
 *
 * OSU's overlap test: first the pure communication time (start + wait, timed as above), then
 * start + a dummy compute lasting about that long (with -t CALLS, cut into CALLS pieces with an
 * MPI_Test after each) + wait. Overall = init + compute + tests + wait; compute excludes the
 * tests; overlap = max(0, 100 - (overall - compute) / pure comm * 100).
 */

/* This rank's totals over the timed iterations of the overlap loop, in seconds. */
struct nbc_times {
    double overall, compute, init, test, wait;
};

#define NBC_DIM 25
static float nbc_a[NBC_DIM][NBC_DIM], nbc_x[NBC_DIM], nbc_y[NBC_DIM];
static volatile float nbc_sink;

/* One step of the dummy compute (a small dense matrix sweep). */
static inline void nbc_compute_step(void)
{
    for (int i = 0; i < NBC_DIM; i++)
        for (int j = 0; j < NBC_DIM; j++)
            nbc_x[i] = nbc_x[i] + nbc_a[i][j] * nbc_a[j][i] + nbc_y[j];
    nbc_sink = nbc_x[NBC_DIM - 1];
}

/* Fills the dummy compute's arrays. */
static inline void nbc_init_arrays(void)
{
    for (int i = 0; i < NBC_DIM; i++) {
        nbc_x[i] = nbc_y[i] = 1.0f;
        for (int j = 0; j < NBC_DIM; j++)
            nbc_a[i][j] = 2.0f;
    }
}

/* Computes for `seconds` (in test_calls pieces, each followed by an MPI_Test of *req, when
 * test_calls > 0); returns the seconds spent in MPI_Test. */
static inline double dummy_compute(double seconds, long test_calls, MPI_Request *req)
{
    double piece = test_calls > 0 ? seconds / (double)test_calls : seconds;
    long pieces = test_calls > 0 ? test_calls : 1;
    double tested = 0.0;
    for (long k = 0; k < pieces; k++) {
        double spent = 0.0;
        while (spent < piece) {
            double t0 = MPI_Wtime();
            nbc_compute_step();
            spent += MPI_Wtime() - t0;
        }
        if (test_calls > 0) {
            int flag = 0;
            double t0 = MPI_Wtime();
            MPI_Test(req, &flag, MPI_STATUS_IGNORE);
            tested += MPI_Wtime() - t0;
        }
    }
    return tested;
}

/* The nonblocking tests' header (OSU's columns; -f adds Coll. Init, MPI_Test, MPI_Wait). */
static inline void header_nbc(const char *title, int nranks, const struct opts *o)
{
    char impl[160];
    printf("# %s (oxmpi peer loop, %s), %d ranks\n", title, impl_name(impl, sizeof impl), nranks);
    printf("# Overall = Coll. Init + Compute + MPI_Test + MPI_Wait\n");
    printf("%-10s%18s%18s", "# Size", "Overall(us)", "Compute(us)");
    if (o->full)
        printf("%18s%18s%18s", "Coll. Init(us)", "MPI_Test(us)", "MPI_Wait(us)");
    printf("%18s%18s\n", "Pure Comm.(us)", "Overlap(%)");
    fflush(stdout);
}

/* Averages every figure over the ranks (MPI_Reduce sums to rank 0) and prints one line there.
 * comm_us: this rank's pure communication latency; t: this rank's totals over `iters`. */
static inline void report_nbc(int rank, int nranks, size_t size, double comm_us,
                              const struct nbc_times *t, long iters, const struct opts *o)
{
    double per = 1e6 / (double)iters;
    double mine[6] = {t->overall * per, t->compute * per, t->init * per,
                      t->test * per, t->wait * per, comm_us};
    double sum[6] = {0};
    MPI_Reduce(mine, sum, 6, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank != 0)
        return;
    for (int k = 0; k < 6; k++)
        sum[k] /= nranks;
    double overall = sum[0], compute = sum[1], comm = sum[5];
    double overlap = comm > 0.0 ? 100.0 - (overall - compute) / comm * 100.0 : 0.0;
    if (overlap < 0.0)
        overlap = 0.0;
    printf("%-10zu%18.2f%18.2f", size, overall, compute);
    if (o->full)
        printf("%18.2f%18.2f%18.2f", sum[2], sum[3], sum[4]);
    printf("%18.2f%18.2f\n", comm, overlap);
    fflush(stdout);
}

#endif
