/*
 * osu_allreduce (oxmpi peer loop): MPI_Allreduce (MPI_SUM over MPI_FLOAT) of SIZE bytes on
 * every rank.
 * Sizes are in bytes of MPI_FLOAT data (SIZE / 4 floats; sizes under 4 bytes are skipped).
 * Per size: a barrier, then warm-up + timed calls, each timed on its own and followed by an
 * untimed MPI_Barrier; a rank's latency is its timed total / ITERS; rank 0 prints the average
 * over the ranks (-f: also min, max, iterations), as OSU's collective tests do.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_allreduce.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP  -f   (defaults: 4:4194304, 1000, 200; sizes above
 *        8192 bytes run max(ITERS/10, 10) iterations and max(WARMUP/10, 2) warm-ups)
 */
#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse_flags(argc, argv, "osu_allreduce", rank, 4, 1000, 200, FLAGS_COLL);
    if (!require(rank, nranks >= 2, "osu_allreduce", "at least 2 ranks"))
        return 1;
    float *sbuf = float_buffer(o.max / sizeof(float), 1.0f);
    float *rbuf = float_buffer(o.max / sizeof(float), 0.0f);
    if (rank == 0)
        header_coll("OSU MPI Allreduce Latency Test", nranks, &o, 1);
    size_t last = 0;
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        size_t bytes = float_bytes(size);
        if (bytes == 0 || bytes == last)
            continue;
        last = bytes;
        int count = (int)(bytes / sizeof(float));
        long iters, warmup;
        double us;
        iters_for(&o, bytes, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        TIME_COLL(us, iters, warmup,
                  MPI_Allreduce(sbuf, rbuf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
        report_coll(rank, nranks, (long long)bytes, us, iters, &o);
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
