/* The libfabric API oxmpi binds: the headers' types and constants, the shim's loader and its
 * forwarders to the library's exported calls (resolved at run time), and out-of-line versions
 * of the static inline calls (fi_endpoint, fi_send, fi_cq_read, ...), which bindgen cannot
 * bind. */
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_eq.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

/* The shared library loaded at run time, by its soname. */
#define OXMPI_FI_LIBRARY "libfabric.so.1"

/* Loads the library once (thread-safe): 0 on success, -1 with the reason in
 * oxmpi_fi_load_error(). Every forwarder below loads it first if needed. */
int oxmpi_fi_load(void);
const char *oxmpi_fi_load_error(void);

/* The exported calls; without the library they return -FI_ENOSYS, NULL, 0 or a message. */
int oxmpi_fi_getinfo(uint32_t version, const char *node, const char *service, uint64_t flags,
                     const struct fi_info *hints, struct fi_info **info);
void oxmpi_fi_freeinfo(struct fi_info *info);
const char *oxmpi_fi_strerror(int errnum);
uint32_t oxmpi_fi_version(void);
int oxmpi_fi_fabric(struct fi_fabric_attr *attr, struct fid_fabric **fabric);

/* The static inline calls, out of line. */
int oxmpi_fi_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain);
int oxmpi_fi_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep);
int oxmpi_fi_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq);
int oxmpi_fi_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av);
int oxmpi_fi_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags);
int oxmpi_fi_enable(struct fid_ep *ep);
int oxmpi_fi_close(struct fid *fid);
int oxmpi_fi_getname(struct fid *fid, void *addr, size_t *addrlen);
int oxmpi_fi_setname(struct fid *fid, void *addr, size_t addrlen);
int oxmpi_fi_av_insert(struct fid_av *av, const void *addr, size_t count, fi_addr_t *fi_addr,
                       uint64_t flags);
ssize_t oxmpi_fi_send(struct fid_ep *ep, const void *buf, size_t len, void *desc,
                      fi_addr_t dest, void *context);
ssize_t oxmpi_fi_sendv(struct fid_ep *ep, const struct iovec *iov, void **desc, size_t count,
                       fi_addr_t dest, void *context);
ssize_t oxmpi_fi_inject(struct fid_ep *ep, const void *buf, size_t len, fi_addr_t dest);
ssize_t oxmpi_fi_injectdata(struct fid_ep *ep, const void *buf, size_t len, uint64_t data,
                            fi_addr_t dest);
ssize_t oxmpi_fi_recv(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                      void *context);
ssize_t oxmpi_fi_read(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                      uint64_t addr, uint64_t key, void *context);
ssize_t oxmpi_fi_cq_read(struct fid_cq *cq, void *buf, size_t count);
ssize_t oxmpi_fi_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf, uint64_t flags);
const char *oxmpi_fi_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data,
                                 char *buf, size_t len);
int oxmpi_fi_mr_reg(struct fid_domain *domain, const void *buf, size_t len, uint64_t access,
                    uint64_t offset, uint64_t requested_key, uint64_t flags, struct fid_mr **mr,
                    void *context);
int oxmpi_fi_mr_bind(struct fid_mr *mr, struct fid *bfid, uint64_t flags);
int oxmpi_fi_mr_enable(struct fid_mr *mr);
void *oxmpi_fi_mr_desc(struct fid_mr *mr);
uint64_t oxmpi_fi_mr_key(struct fid_mr *mr);
struct fi_info *oxmpi_fi_allocinfo(void);
int oxmpi_fi_control(struct fid *fid, int command, void *arg);
