/*
 * osu_barrier (oxmpi peer loop): MPI_Barrier latency over all ranks. Each of the warm-up and
 * timed barriers is timed on its own (no extra barrier between them); a rank's latency is its
 * timed total / ITERS; rank 0 prints the average over the ranks (-f: also min, max, iterations).
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_barrier.rs
 * (same flags, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -i ITERS  -x WARMUP  -f   (defaults: 1000, 200). -m is accepted and ignored.
 */
#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse_flags(argc, argv, "osu_barrier", rank, 1, 1000, 200, FLAGS_COLL);
    if (!require(rank, nranks >= 2, "osu_barrier", "at least 2 ranks"))
        return 1;
    if (rank == 0)
        header_coll("OSU MPI Barrier Latency Test", nranks, &o, 0);
    MPI_Barrier(MPI_COMM_WORLD);
    double total = 0.0;
    for (long i = 0; i < o.iters + o.warmup; i++) {
        double t0 = MPI_Wtime();
        MPI_Barrier(MPI_COMM_WORLD);
        double t1 = MPI_Wtime();
        if (i >= o.warmup)
            total += t1 - t0;
    }
    report_coll(rank, nranks, -1, total * 1e6 / (double)o.iters, o.iters, &o);
    MPI_Finalize();
    return 0;
}
