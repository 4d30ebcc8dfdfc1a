/*
 * osu_scatter (oxmpi peer loop): MPI_Scatter of N * SIZE bytes (MPI_CHAR) at rank 0, SIZE bytes to
 * every rank.
 * Per size: a barrier, then warm-up + timed calls, each timed on its own and followed by an
 * untimed MPI_Barrier; a rank's latency is its timed total / ITERS; rank 0 prints the average
 * over the ranks (-f: also min, max, iterations), as OSU's collective tests do.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_scatter.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP  -f   (defaults: 1:4194304, 1000, 200; sizes above
 *        8192 bytes run max(ITERS/10, 10) iterations and max(WARMUP/10, 2) warm-ups)
 */
#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse_flags(argc, argv, "osu_scatter", rank, 1, 1000, 200, FLAGS_COLL);
    if (!require(rank, nranks >= 2, "osu_scatter", "at least 2 ranks"))
        return 1;
    char *sbuf = page_buffer(o.max * (size_t)nranks, 1);
    char *rbuf = page_buffer(o.max, 0);
    if (rank == 0)
        header_coll("OSU MPI Scatter Latency Test", nranks, &o, 1);
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        long iters, warmup;
        double us;
        iters_for(&o, size, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        TIME_COLL(us, iters, warmup,
                  MPI_Scatter(sbuf, (int)size, MPI_CHAR, rbuf, (int)size, MPI_CHAR, 0,
                              MPI_COMM_WORLD));
        report_coll(rank, nranks, (long long)size, us, iters, &o);
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
