/*
 * reduce_local (oxmpi peer loop): the throughput of the library's reduction kernels,
 * MPI_Reduce_local(in, inout, count, type, op) in one process, for the builtin ops on the
 * common element types: the C counterpart of bench/src/bin/reduce_local.rs (same cases, sizes,
 * batches and output shape). Run it as one rank (mpirun -n 1); scripts/reduce-local.sh runs
 * it beside oxmpi's.
 *
 * Per (type, op, size): 10 warm-up calls, then 7 batches of calls covering about 16 MiB of
 * inout each; prints the best batch as MB/s (10^6 bytes of inout per second).
 * Flags: -m [MIN:]MAX (bytes; default 4096:1048576, every 16x from MIN).
 *
 * Written for the oxmpi project; not OSU's source code.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCHES 7
#define BATCH_BYTES (16L << 20)

static void *filled(size_t n, size_t elem, MPI_Datatype type, int value)
{
    void *p = NULL;
    if (posix_memalign(&p, 4096, n * elem) != 0) {
        fprintf(stderr, "reduce_local: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (size_t i = 0; i < n; i++) {
        char *e = (char *)p + i * elem;
        if (type == MPI_FLOAT) *(float *)e = (float)value;
        else if (type == MPI_DOUBLE) *(double *)e = (double)value;
        else if (elem == 8) *(int64_t *)e = value;
        else if (elem == 4) *(int32_t *)e = value;
        else if (elem == 2) *(int16_t *)e = (int16_t)value;
        else *(int8_t *)e = (int8_t)value;
    }
    return p;
}

static double measure(MPI_Datatype type, size_t elem, MPI_Op op, size_t size)
{
    size_t n = size / elem ? size / elem : 1;
    void *a = filled(n, elem, type, 1), *b = filled(n, elem, type, 2);
    for (int i = 0; i < 10; i++)
        MPI_Reduce_local(a, b, (int)n, type, op);
    long calls = BATCH_BYTES / (long)size;
    if (calls < 1)
        calls = 1;
    double best = 0;
    for (int k = 0; k < BATCHES; k++) {
        double t = MPI_Wtime();
        for (long i = 0; i < calls; i++)
            MPI_Reduce_local(a, b, (int)n, type, op);
        double mbs = (double)calls * (double)(n * elem) / (MPI_Wtime() - t) / 1e6;
        if (mbs > best)
            best = mbs;
    }
    free(a);
    free(b);
    return best;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    size_t min = 4096, max = 1 << 20;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-m") == 0 && i + 1 < argc) {
            char *colon = strchr(argv[++i], ':');
            if (colon) {
                min = strtoul(argv[i], NULL, 10);
                max = strtoul(colon + 1, NULL, 10);
            } else {
                max = strtoul(argv[i], NULL, 10);
            }
        } else {
            fprintf(stderr, "usage: reduce_local [-m [MIN:]MAX]\n");
            return 2;
        }
    }
    if (min == 0 || min > max) {
        fprintf(stderr, "usage: reduce_local [-m [MIN:]MAX]\n");
        return 2;
    }
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    int len;
    MPI_Get_library_version(lib, &len);
    lib[strcspn(lib, ",\n")] = 0;
    printf("# %s MPI_Reduce_local (inout = in op inout), best of %d batches\n", lib, BATCHES);
    printf("# %-8s %-5s %10s %12s\n", "type", "op", "size", "MB/s");
    struct { const char *name; MPI_Datatype type; size_t elem; const char *ops; } cases[] = {
        {"float", MPI_FLOAT, 4, "sum prod max min"},
        {"double", MPI_DOUBLE, 8, "sum prod max min"},
        {"int32", MPI_INT32_T, 4, "sum prod max min band"},
        {"uint32", MPI_UINT32_T, 4, "max"},
        {"int64", MPI_INT64_T, 8, "sum prod max min bxor"},
        {"uint64", MPI_UINT64_T, 8, "max"},
        {"int16", MPI_INT16_T, 2, "sum prod max"},
        {"uint8", MPI_UINT8_T, 1, "sum prod max"},
        {"int8", MPI_INT8_T, 1, "sum"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char ops[64];
        snprintf(ops, sizeof ops, "%s", cases[c].ops);
        for (char *name = strtok(ops, " "); name; name = strtok(NULL, " ")) {
            MPI_Op op = strcmp(name, "sum") == 0    ? MPI_SUM
                        : strcmp(name, "prod") == 0 ? MPI_PROD
                        : strcmp(name, "max") == 0  ? MPI_MAX
                        : strcmp(name, "min") == 0  ? MPI_MIN
                        : strcmp(name, "band") == 0 ? MPI_BAND
                                                    : MPI_BXOR;
            for (size_t size = min; size <= max; size *= 16) {
                printf("%-10s %-5s %10zu %12.1f\n", cases[c].name, name, size,
                       measure(cases[c].type, cases[c].elem, op, size));
                fflush(stdout);
            }
        }
    }
    MPI_Finalize();
    return 0;
}
