/*
 * ofi_rndv_pingpong: oxmpi's rendezvous protocol, alone, in C over libfabric's shm provider.
 *
 * Two processes (one fork) ping-pong messages the way oxmpi's `ofi` backend moves a message
 * above its eager limit: the sender injects a small request to send (RTS: the buffer's address
 * and key), the receiver pulls the data with one `fi_read` into its own buffer, waits for the
 * read's completion and injects a small FIN, on which the sender's send completes. No matching,
 * no registration cache, no progress engine: this is the floor that protocol can reach over the
 * provider, to set beside libfabric's own `fi_pingpong` (one `fi_send` the provider matches to a
 * posted `fi_recv`) and oxmpi's `osu_latency` (the same protocol through oxmpi's layers).
 *
 * With -t, the variant that lets the provider place the data: the sender injects the RTS and
 * at once posts the data as a tagged message (`fi_tsend`, a tag per message); the receiver,
 * on the RTS, posts a tagged receive for that tag into its buffer, and the provider's own
 * completion of the tagged send replaces the FIN.
 *
 *   ofi_rndv_pingpong [-t] [-i ITERS] SIZE...
 *
 * Prints one line per SIZE: "SIZE USEC" with USEC half a round trip, as `osu_latency` and
 * `fi_pingpong` report. The parent runs on CPU 0, the child on CPU 1. Only the shm provider:
 * the loop drives progress only while it waits, which a provider that needs the target's
 * progress for a read (tcp, rxm) does not get from a sender blocked on its FIN in this way.
 * Build: cc -O2 -o ofi_rndv_pingpong ofi_rndv_pingpong.c -lfabric (scripts/ofi-rndv.sh does).
 */
#define _GNU_SOURCE
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <rdma/fi_tagged.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(call)                                                                      \
    do {                                                                                 \
        int rc_ = (int)(call);                                                           \
        if (rc_) {                                                                       \
            fprintf(stderr, "ofi_rndv_pingpong: %s: %s\n", #call, fi_strerror(-rc_));     \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

enum { SLOTS = 8, SLOT_BYTES = 64, RTS = 1, FIN = 2 };

/* The control message: an RTS names the sender's buffer, a FIN only says "read". */
struct ctl {
    uint32_t kind;
    uint64_t addr, key;
};

static struct fid_ep *ep;
static struct fid_cq *cq;
static fi_addr_t peer;
static char slot_buf[SLOTS][SLOT_BYTES];
static struct fi_context2 slot_ctx[SLOTS], read_ctx, tsend_ctx, trecv_ctx;
static int read_done, tsend_done, trecv_done;
/* A control message that arrived while a tagged operation was waited for (-t): its slot. */
static int held_slot = -1;

/* Closes the endpoint when the process exits on an error path (a CHECK, a wrong byte):
 * closing removes the shm provider's region from /dev/shm, which exiting without it leaves
 * behind under a name derived from the pid. */
static void close_endpoint(void) {
    if (ep) fi_close(&ep->fid);
    ep = NULL;
}

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die_cq(void) {
    struct fi_cq_err_entry e = {0};
    fi_cq_readerr(cq, &e, 0);
    fprintf(stderr, "ofi_rndv_pingpong: completion error: %s\n", fi_strerror(e.err));
    exit(1);
}

/* Reads one completion if there is one: a receive gives its slot, a read sets read_done. */
static int poll_once(void) {
    struct fi_cq_data_entry e;
    ssize_t n = fi_cq_read(cq, &e, 1);
    if (n == -FI_EAGAIN) return -1;
    if (n < 0) die_cq();
    if (e.op_context == &tsend_ctx) tsend_done = 1;
    else if (e.op_context == &trecv_ctx) trecv_done = 1;
    else if (e.flags & FI_RECV) return (int)((struct fi_context2 *)e.op_context - slot_ctx);
    else if (e.flags & FI_READ) read_done = 1;
    return -1;
}

/* Waits for the next control message; returns it and posts its slot again. */
static struct ctl wait_ctl(void) {
    int s = held_slot;
    held_slot = -1;
    while (s < 0 && (s = poll_once()) < 0) {
    }
    struct ctl m;
    memcpy(&m, slot_buf[s], sizeof m);
    CHECK(fi_recv(ep, slot_buf[s], SLOT_BYTES, NULL, FI_ADDR_UNSPEC, &slot_ctx[s]));
    return m;
}

static void inject(const struct ctl *m) {
    ssize_t r;
    while ((r = fi_inject(ep, m, sizeof *m, peer)) == -FI_EAGAIN) {
        if (poll_once() >= 0) {
            fprintf(stderr, "ofi_rndv_pingpong: a message arrived out of turn\n");
            exit(1);
        }
    }
    CHECK(r);
}

int main(int argc, char **argv) {
    int iters = 20000, opt, tagged = 0;
    while ((opt = getopt(argc, argv, "ti:")) != -1) {
        if (opt == 'i') iters = atoi(optarg);
        else if (opt == 't') tagged = 1;
        else {
            fprintf(stderr, "usage: %s [-t] [-i ITERS] SIZE...\n", argv[0]);
            return 2;
        }
    }
    if (optind >= argc || iters < 2) {
        fprintf(stderr, "usage: %s [-t] [-i ITERS] SIZE...\n", argv[0]);
        return 2;
    }
    size_t max = 0;
    for (int a = optind; a < argc; a++) {
        size_t s = strtoull(argv[a], NULL, 10);
        if (s == 0) {
            fprintf(stderr, "ofi_rndv_pingpong: sizes must be positive\n");
            return 2;
        }
        if (s > max) max = s;
    }

    int to_child[2], to_parent[2];
    if (pipe(to_child) || pipe(to_parent)) return 1;
    pid_t pid = fork();
    if (pid < 0) return 1;
    int child = pid == 0;
    cpu_set_t cpus;
    CPU_ZERO(&cpus);
    CPU_SET(child, &cpus);
    sched_setaffinity(0, sizeof cpus, &cpus); /* best effort */

    struct fi_info *hints = fi_allocinfo(), *info;
    hints->caps = FI_MSG | FI_RMA | (tagged ? FI_TAGGED : 0);
    hints->ep_attr->type = FI_EP_RDM;
    hints->mode = FI_CONTEXT | FI_CONTEXT2;
    hints->domain_attr->mr_mode = FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    hints->domain_attr->threading = FI_THREAD_DOMAIN;
    hints->fabric_attr->prov_name = strdup("shm");
    CHECK(fi_getinfo(FI_VERSION(1, 11), NULL, NULL, 0, hints, &info));
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    struct fid_av *av;
    CHECK(fi_fabric(info->fabric_attr, &fabric, NULL));
    CHECK(fi_domain(fabric, info, &domain, NULL));
    struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_DATA, .size = 128};
    CHECK(fi_cq_open(domain, &cq_attr, &cq, NULL));
    struct fi_av_attr av_attr = {.type = FI_AV_TABLE};
    CHECK(fi_av_open(domain, &av_attr, &av, NULL));
    CHECK(fi_endpoint(domain, info, &ep, NULL));
    CHECK(fi_ep_bind(ep, &cq->fid, FI_SEND | FI_RECV));
    CHECK(fi_ep_bind(ep, &av->fid, 0));
    CHECK(fi_enable(ep));
    atexit(close_endpoint);

    /* Exchange endpoint names over the pipes. */
    char name[256], peer_name[256];
    size_t len = sizeof name;
    CHECK(fi_getname(&ep->fid, name, &len));
    int out = child ? to_parent[1] : to_child[1], in = child ? to_child[0] : to_parent[0];
    if (write(out, &len, sizeof len) != sizeof len || write(out, name, len) != (ssize_t)len)
        return 1;
    size_t peer_len;
    if (read(in, &peer_len, sizeof peer_len) != sizeof peer_len || peer_len > sizeof peer_name ||
        read(in, peer_name, peer_len) != (ssize_t)peer_len)
        return 1;
    if (fi_av_insert(av, peer_name, 1, &peer, 0, NULL) != 1) {
        fprintf(stderr, "ofi_rndv_pingpong: fi_av_insert failed\n");
        return 1;
    }

    char *src = aligned_alloc(4096, (max + 4095) / 4096 * 4096);
    char *dst = aligned_alloc(4096, (max + 4095) / 4096 * 4096);
    memset(src, 'a' + child, max);
    memset(dst, 0, max);
    struct fid_mr *src_mr, *dst_mr;
    CHECK(fi_mr_reg(domain, src, max, FI_REMOTE_READ, 0, 1, 0, &src_mr, NULL));
    CHECK(fi_mr_reg(domain, dst, max, FI_READ, 0, 2, 0, &dst_mr, NULL));
    for (int s = 0; s < SLOTS; s++)
        CHECK(fi_recv(ep, slot_buf[s], SLOT_BYTES, NULL, FI_ADDR_UNSPEC, &slot_ctx[s]));

    const struct ctl rts = {RTS, (uint64_t)(uintptr_t)src, fi_mr_key(src_mr)}, fin = {FIN, 0, 0};
    for (int a = optind; a < argc; a++) {
        size_t size = strtoull(argv[a], NULL, 10);
        int warmup = iters / 10;
        double start = 0;
        for (int it = 0; it < iters + warmup; it++) {
            if (it == warmup) start = now_us();
            int sending = (it % 2 == 0) != child;
            if (tagged && sending) {
                /* The peer's next RTS may come before this send's completion: hold it. */
                inject(&rts);
                tsend_done = 0;
                ssize_t r;
                while ((r = fi_tsend(ep, src, size, NULL, peer, (uint64_t)it, &tsend_ctx)) ==
                       -FI_EAGAIN) {
                    int s = poll_once();
                    if (s >= 0) held_slot = s;
                }
                CHECK(r);
                while (!tsend_done) {
                    int s = poll_once();
                    if (s >= 0) held_slot = s;
                }
            } else if (tagged) {
                if (wait_ctl().kind != RTS) {
                    fprintf(stderr, "ofi_rndv_pingpong: expected an RTS\n");
                    return 1;
                }
                trecv_done = 0;
                ssize_t r;
                while ((r = fi_trecv(ep, dst, size, NULL, peer, (uint64_t)it, 0, &trecv_ctx)) ==
                       -FI_EAGAIN) {
                    if (poll_once() >= 0) {
                        fprintf(stderr, "ofi_rndv_pingpong: a message arrived out of turn\n");
                        return 1;
                    }
                }
                CHECK(r);
                while (!trecv_done) {
                    if (poll_once() >= 0) {
                        fprintf(stderr, "ofi_rndv_pingpong: a message arrived during a receive\n");
                        return 1;
                    }
                }
                if (dst[size - 1] != 'a' + !child) {
                    fprintf(stderr, "ofi_rndv_pingpong: the receive brought the wrong bytes\n");
                    return 1;
                }
            } else if (sending) {
                inject(&rts);
                if (wait_ctl().kind != FIN) {
                    fprintf(stderr, "ofi_rndv_pingpong: expected a FIN\n");
                    return 1;
                }
            } else {
                struct ctl m = wait_ctl();
                if (m.kind != RTS) {
                    fprintf(stderr, "ofi_rndv_pingpong: expected an RTS\n");
                    return 1;
                }
                read_done = 0;
                ssize_t r;
                while ((r = fi_read(ep, dst, size, fi_mr_desc(dst_mr), peer, m.addr, m.key,
                                    &read_ctx)) == -FI_EAGAIN) {
                    if (poll_once() >= 0) {
                        fprintf(stderr, "ofi_rndv_pingpong: a message arrived out of turn\n");
                        return 1;
                    }
                }
                CHECK(r);
                while (!read_done) {
                    if (poll_once() >= 0) {
                        fprintf(stderr, "ofi_rndv_pingpong: a message arrived during a read\n");
                        return 1;
                    }
                }
                if (dst[size - 1] != 'a' + !child) {
                    fprintf(stderr, "ofi_rndv_pingpong: the read brought the wrong bytes\n");
                    return 1;
                }
                inject(&fin);
            }
        }
        /* Each iteration is one message one way: half a round trip. */
        if (!child) printf("%zu %.2f\n", size, (now_us() - start) / iters);
        fflush(stdout);
    }
    /* Both sides done (a byte each way over the pipes), close the endpoint: that removes its
     * region from /dev/shm, which exiting without it would leave behind. */
    char done = 1;
    if (write(out, &done, 1) != 1 || read(in, &done, 1) != 1) return 1;
    close_endpoint();
    if (!child) waitpid(pid, NULL, 0);
    _exit(0);
}
