/*
 * osu_bw (oxmpi peer loop): rank 0 posts a window of MPI_Isend, rank 1 the matching window of
 * MPI_Irecv; both MPI_Waitall, then rank 1 answers with a 4-byte acknowledgement (OSU style).
 * Prints the bandwidth in MB/s = size * window * iters / elapsed / 1e6.
 *
 * Written for the oxmpi project as a plain-MPI counterpart of bench/src/bin/osu_bw.rs
 * (same flags, sizes, iteration counts and output shape); it is not OSU's source code.
 *
 * Flags: -m [MIN:]MAX  -i ITERS  -x WARMUP  -W WINDOW   (defaults: 1:4194304, 100, 10, 64;
 *        sizes above 8192 bytes run max(max(ITERS/10, 10) / 5, 10) iterations and
 *        max(WARMUP/10, 2) warm-ups). As in OSU, every send of a window goes from the same
 *        buffer; each receive of a window has its own slot (as in osu_bw.rs, whose pending
 *        receives may not overlap).
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
    struct opts o = parse(argc, argv, "osu_bw", rank, 1, 100, 10);
    if (!require(rank, nranks == 2, "osu_bw", "exactly 2 ranks"))
        return 1;
    long window = o.window;
    /* Rank 0 sends every message of a window from the first slot; rank 1 receives each into
     * its own slot. */
    char *buf = page_buffer(o.max * (size_t)(rank == 0 ? 1 : window), rank == 0 ? 's' : 'r');
    char ack[4] = {0};
    MPI_Request *reqs = malloc(sizeof(MPI_Request) * (size_t)window);
    if (rank == 0)
        header("OSU MPI Bandwidth Test", "Bandwidth (MB/s)");
    for (size_t size = o.min; size <= o.max; size = next_size(size)) {
        long iters, warmup;
        bw_iters_for(&o, size, &iters, &warmup);
        MPI_Barrier(MPI_COMM_WORLD);
        double start = MPI_Wtime();
        for (long i = 0; i < iters + warmup; i++) {
            if (i == warmup) start = MPI_Wtime();
            if (rank == 0) {
                for (long w = 0; w < window; w++)
                    MPI_Isend(buf, (int)size, MPI_CHAR, 1, 100, MPI_COMM_WORLD, &reqs[w]);
                MPI_Waitall((int)window, reqs, MPI_STATUSES_IGNORE);
                MPI_Recv(ack, 4, MPI_CHAR, 1, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                for (long w = 0; w < window; w++)
                    MPI_Irecv(buf + (size_t)w * size, (int)size, MPI_CHAR, 0, 100, MPI_COMM_WORLD,
                              &reqs[w]);
                MPI_Waitall((int)window, reqs, MPI_STATUSES_IGNORE);
                MPI_Send(ack, 4, MPI_CHAR, 0, 101, MPI_COMM_WORLD);
            }
        }
        double secs = MPI_Wtime() - start;
        if (rank == 0) {
            printf("%-10zu%18.2f\n", size, (double)size * (double)window * (double)iters / secs / 1e6);
            fflush(stdout);
        }
    }
    free(reqs);
    free(buf);
    MPI_Finalize();
    return 0;
}
