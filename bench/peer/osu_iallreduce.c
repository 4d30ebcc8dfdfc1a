/*
 * osu_iallreduce (oxmpi peer loop): OSU's overlap test for MPI_Iallreduce (MPI_SUM over
 * MPI_FLOAT, SIZE / 4 floats; sizes under 4 bytes are skipped). Per size, after a barrier:
 *
 *  1. pure communication: warm-up + timed MPI_Iallreduce + MPI_Wait, each timed on its own and
 *     followed by an untimed MPI_Barrier; this rank's average is its "Pure Comm." time;
 *  2. overlap: warm-up + timed MPI_Iallreduce, then a dummy compute lasting this rank's pure
 *     communication time (with -t CALLS cut into CALLS pieces, each followed by an MPI_Test),
 *     then MPI_Wait; each iteration followed by an untimed MPI_Barrier.
 *
 * Every figure is averaged over the ranks at rank 0. Overall = Coll. Init + Compute + MPI_Test
 * + MPI_Wait; Compute excludes the MPI_Test calls; Overlap(%) = max(0, 100 - (Overall -
 * Compute) / Pure Comm. * 100): 100 when the communication hides entirely behind the compute,
 * 0 when none of it does.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_iallreduce.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP  -f  -t CALLS   (defaults: 4:4194304, 1000, 200, 0;
 *        sizes above 8192 bytes run max(ITERS/10, 10) iterations and max(WARMUP/10, 2)
 *        warm-ups; -f adds the Coll. Init, MPI_Test and MPI_Wait columns)
 */
#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse_flags(argc, argv, "osu_iallreduce", rank, 4, 1000, 200, FLAGS_NBC);
    if (!require(rank, nranks >= 2, "osu_iallreduce", "at least 2 ranks"))
        return 1;
    float *sbuf = float_buffer(o.max / sizeof(float), 1.0f);
    float *rbuf = float_buffer(o.max / sizeof(float), 0.0f);
    nbc_init_arrays();
    if (rank == 0)
        header_nbc("OSU MPI Non-blocking Allreduce Latency Test", nranks, &o);
    size_t last = 0;
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        size_t bytes = float_bytes(size);
        if (bytes == 0 || bytes == last)
            continue;
        last = bytes;
        int count = (int)(bytes / sizeof(float));
        long iters, warmup;
        iters_for(&o, bytes, &iters, &warmup);
        MPI_Request req;

        /* 1. pure communication */
        double comm_us;
        MPI_Barrier(MPI_COMM_WORLD);
        TIME_COLL(comm_us, iters, warmup,
                  (MPI_Iallreduce(sbuf, rbuf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req),
                   MPI_Wait(&req, MPI_STATUS_IGNORE)));

        /* 2. the same with a dummy compute of that length between start and wait */
        struct nbc_times t = {0};
        MPI_Barrier(MPI_COMM_WORLD);
        for (long i = 0; i < iters + warmup; i++) {
            double t0 = MPI_Wtime();
            MPI_Iallreduce(sbuf, rbuf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req);
            double t1 = MPI_Wtime();
            double tested = dummy_compute(comm_us / 1e6, o.test_calls, &req);
            double t2 = MPI_Wtime();
            MPI_Wait(&req, MPI_STATUS_IGNORE);
            double t3 = MPI_Wtime();
            if (i >= warmup) {
                t.overall += t3 - t0;
                t.init += t1 - t0;
                t.compute += t2 - t1 - tested;
                t.test += tested;
                t.wait += t3 - t2;
            }
            MPI_Barrier(MPI_COMM_WORLD);
        }
        report_nbc(rank, nranks, bytes, comm_us, &t, iters, &o);
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
