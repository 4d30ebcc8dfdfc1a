/*
 * osu_multi_lat (oxmpi peer loop): with N ranks (N even), ranks i and i + N/2 ping-pong
 * concurrently with blocking MPI_Send/MPI_Recv; prints the one-way latency in microseconds,
 * elapsed / (2 * iters), averaged over the N/2 pairs.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_multi_lat.rs
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

#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse(argc, argv, "osu_multi_lat", rank, 0, 10000, 1000);
    if (!require(rank, nranks >= 2 && nranks % 2 == 0, "osu_multi_lat", "an even number of ranks"))
        return 1;
    int half = nranks / 2;
    int pinger = rank < half;
    int peer = pinger ? rank + half : rank - half;
    char *sbuf = page_buffer(o.max, 'a');
    char *rbuf = page_buffer(o.max, 'b');
    if (rank == 0)
        header("OSU MPI Multiple Latency Test", "Latency (us)");
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        long iters, warmup;
        iters_for(&o, size, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (long i = 0; i < iters + warmup; i++) {
            if (i == warmup) start = MPI_Wtime();
            if (pinger) {
                MPI_Send(sbuf, (int)size, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
                MPI_Recv(rbuf, (int)size, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                MPI_Recv(rbuf, (int)size, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(sbuf, (int)size, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
            }
        }
        /* Each pair's figure comes from its pinger; the others add nothing. */
        double us = pinger ? (MPI_Wtime() - start) * 1e6 / (2.0 * (double)iters) : 0.0, sum = 0.0;
        MPI_Reduce(&us, &sum, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            printf("%-10zu%18.2f\n", size, sum / half);
            fflush(stdout);
        }
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
