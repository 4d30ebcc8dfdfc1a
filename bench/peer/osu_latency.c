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

#include "common.h"

int main(int argc, char **argv)
{
    int rank, nranks;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    struct opts o = parse(argc, argv, "osu_latency", rank, 0, 10000, 1000);
    if (!require(rank, nranks == 2, "osu_latency", "exactly 2 ranks"))
        return 1;
    char *sbuf = page_buffer(o.max, 'a');
    char *rbuf = page_buffer(o.max, 'b');
    if (rank == 0)
        header("OSU MPI Latency Test", "Latency (us)");
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
