/*
 * osu_bibw (oxmpi peer loop): ranks 0 and 1 each post a window of MPI_Irecv and a window of
 * MPI_Isend to the other at once, then MPI_Waitall; prints the aggregate bandwidth of both
 * directions in MB/s = 2 * size * window * iters / elapsed / 1e6.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_bibw.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP  -W WINDOW   (defaults: 1:4194304, 100, 10, 64;
 *        sizes above 8192 bytes run max(max(ITERS/10, 10) / 5, 10) iterations and
 *        max(WARMUP/10, 2) warm-ups). As in OSU, every send of a window goes from the same
 *        buffer; each receive of a window has its own slot (see osu_bw.c).
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
    struct opts o = parse(argc, argv, "osu_bibw", rank, 1, 100, 10);
    if (!require(rank, nranks == 2, "osu_bibw", "exactly 2 ranks"))
        return 1;
    int peer = 1 - rank;
    long window = o.window;
    char *sbuf = page_buffer(o.max, 's');
    char *rbuf = page_buffer(o.max * (size_t)window, 'r');
    MPI_Request *reqs = malloc(sizeof(MPI_Request) * 2 * (size_t)window);
    if (rank == 0)
        header("OSU MPI Bi-Directional Bandwidth Test", "Bandwidth (MB/s)");
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        long iters, warmup;
        bw_iters_for(&o, size, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (long i = 0; i < iters + warmup; i++) {
            if (i == warmup) start = MPI_Wtime();
            for (long w = 0; w < window; w++)
                MPI_Irecv(rbuf + (size_t)w * size, (int)size, MPI_CHAR, peer, 100, MPI_COMM_WORLD,
                          &reqs[w]);
            for (long w = 0; w < window; w++)
                MPI_Isend(sbuf, (int)size, MPI_CHAR, peer, 100, MPI_COMM_WORLD,
                          &reqs[window + w]);
            MPI_Waitall((int)(2 * window), reqs, MPI_STATUSES_IGNORE);
        }
        double secs = MPI_Wtime() - start;
        if (rank == 0) {
            printf("%-10zu%18.2f\n", size,
                   2.0 * (double)size * (double)window * (double)iters / secs / 1e6);
            fflush(stdout);
        }
    }
    free(reqs);
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
