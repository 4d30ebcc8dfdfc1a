/* Out-of-line versions of libfabric's static inline calls, so Rust can link to them.
 * Each forwards to the inline function of the same name without the prefix. */
#include "../wrapper.h"

int oxmpi_fi_fabric(struct fi_fabric_attr *attr, struct fid_fabric **fabric)
{ return fi_fabric(attr, fabric, NULL); }
int oxmpi_fi_domain(struct fid_fabric *fabric, struct fi_info *info, struct fid_domain **domain)
{ return fi_domain(fabric, info, domain, NULL); }
int oxmpi_fi_endpoint(struct fid_domain *domain, struct fi_info *info, struct fid_ep **ep)
{ return fi_endpoint(domain, info, ep, NULL); }
int oxmpi_fi_cq_open(struct fid_domain *domain, struct fi_cq_attr *attr, struct fid_cq **cq)
{ return fi_cq_open(domain, attr, cq, NULL); }
int oxmpi_fi_av_open(struct fid_domain *domain, struct fi_av_attr *attr, struct fid_av **av)
{ return fi_av_open(domain, attr, av, NULL); }
int oxmpi_fi_ep_bind(struct fid_ep *ep, struct fid *bfid, uint64_t flags)
{ return fi_ep_bind(ep, bfid, flags); }
int oxmpi_fi_enable(struct fid_ep *ep) { return fi_enable(ep); }
int oxmpi_fi_close(struct fid *fid) { return fi_close(fid); }
int oxmpi_fi_getname(struct fid *fid, void *addr, size_t *addrlen)
{ return fi_getname(fid, addr, addrlen); }
int oxmpi_fi_av_insert(struct fid_av *av, const void *addr, size_t count, fi_addr_t *fi_addr,
                       uint64_t flags)
{ return fi_av_insert(av, addr, count, fi_addr, flags, NULL); }
ssize_t oxmpi_fi_send(struct fid_ep *ep, const void *buf, size_t len, void *desc,
                      fi_addr_t dest, void *context)
{ return fi_send(ep, buf, len, desc, dest, context); }
ssize_t oxmpi_fi_sendv(struct fid_ep *ep, const struct iovec *iov, void **desc, size_t count,
                       fi_addr_t dest, void *context)
{ return fi_sendv(ep, iov, desc, count, dest, context); }
ssize_t oxmpi_fi_inject(struct fid_ep *ep, const void *buf, size_t len, fi_addr_t dest)
{ return fi_inject(ep, buf, len, dest); }
ssize_t oxmpi_fi_injectdata(struct fid_ep *ep, const void *buf, size_t len, uint64_t data,
                            fi_addr_t dest)
{ return fi_injectdata(ep, buf, len, data, dest); }
ssize_t oxmpi_fi_recv(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                      void *context)
{ return fi_recv(ep, buf, len, desc, src, context); }
ssize_t oxmpi_fi_read(struct fid_ep *ep, void *buf, size_t len, void *desc, fi_addr_t src,
                      uint64_t addr, uint64_t key, void *context)
{ return fi_read(ep, buf, len, desc, src, addr, key, context); }
ssize_t oxmpi_fi_cq_read(struct fid_cq *cq, void *buf, size_t count)
{ return fi_cq_read(cq, buf, count); }
ssize_t oxmpi_fi_cq_readerr(struct fid_cq *cq, struct fi_cq_err_entry *buf, uint64_t flags)
{ return fi_cq_readerr(cq, buf, flags); }
const char *oxmpi_fi_cq_strerror(struct fid_cq *cq, int prov_errno, const void *err_data,
                                 char *buf, size_t len)
{ return fi_cq_strerror(cq, prov_errno, err_data, buf, len); }
int oxmpi_fi_mr_reg(struct fid_domain *domain, const void *buf, size_t len, uint64_t access,
                    uint64_t offset, uint64_t requested_key, uint64_t flags, struct fid_mr **mr,
                    void *context)
{ return fi_mr_reg(domain, buf, len, access, offset, requested_key, flags, mr, context); }
int oxmpi_fi_mr_bind(struct fid_mr *mr, struct fid *bfid, uint64_t flags)
{ return fi_mr_bind(mr, bfid, flags); }
int oxmpi_fi_mr_enable(struct fid_mr *mr) { return fi_mr_enable(mr); }
void *oxmpi_fi_mr_desc(struct fid_mr *mr) { return fi_mr_desc(mr); }
uint64_t oxmpi_fi_mr_key(struct fid_mr *mr) { return fi_mr_key(mr); }
struct fi_info *oxmpi_fi_allocinfo(void) { return fi_allocinfo(); }
int oxmpi_fi_control(struct fid *fid, int command, void *arg)
{ return fi_control(fid, command, arg); }
