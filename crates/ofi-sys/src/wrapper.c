/* libfabric for Rust, loaded at run time.
 *
 * - The library's exported calls (fi_getinfo, fi_fabric, ...) are resolved with dlopen/dlsym
 *   the first time one is needed, so a program built with the `ofi` feature starts on a machine
 *   without libfabric, and a program that never picks the ofi fabric never loads it (nor the
 *   provider libraries it pulls in, whose signal handlers would change how a rank dies).
 * - libfabric's static inline calls (fi_endpoint, fi_send, fi_cq_read, ...) get out-of-line
 *   versions here, prefixed oxmpi_fi_, each forwarding to the inline function of the same name.
 *   They call through the objects' operation tables, so they need no symbol from the library;
 *   fi_allocinfo, the one that calls an exported function (fi_dupinfo), goes through the
 *   loaded pointer. */
#include "../wrapper.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

/* The library's exported calls, typed from the headers' own declarations. */
static __typeof__(fi_getinfo) *p_getinfo;
static __typeof__(fi_freeinfo) *p_freeinfo;
static __typeof__(fi_dupinfo) *p_dupinfo;
static __typeof__(fi_strerror) *p_strerror;
static __typeof__(fi_version) *p_version;
static __typeof__(fi_fabric) *p_fabric;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int load_result = -1;
static char load_error[512] = "libfabric has not been loaded";

static void *resolve(void *lib, const char *name)
{
    void *f = dlsym(lib, name);
    if (!f && load_error[0] == '\0')
        snprintf(load_error, sizeof load_error, "%s lacks %s", OXMPI_FI_LIBRARY, name);
    return f;
}

static void load_library(void)
{
    void *lib = dlopen(OXMPI_FI_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        snprintf(load_error, sizeof load_error, "%s", why ? why : OXMPI_FI_LIBRARY);
        return;
    }
    load_error[0] = '\0';
    p_getinfo = resolve(lib, "fi_getinfo");
    p_freeinfo = resolve(lib, "fi_freeinfo");
    p_dupinfo = resolve(lib, "fi_dupinfo");
    p_strerror = resolve(lib, "fi_strerror");
    p_version = resolve(lib, "fi_version");
    p_fabric = resolve(lib, "fi_fabric");
    if (load_error[0] != '\0')
        return; /* The handle stays open: harmless, and a partial library is not retried. */
    load_result = 0;
}

int oxmpi_fi_load(void)
{
    pthread_once(&load_once, load_library);
    return load_result;
}

const char *oxmpi_fi_load_error(void)
{
    return oxmpi_fi_load() == 0 ? "" : load_error;
}

int oxmpi_fi_getinfo(uint32_t version, const char *node, const char *service, uint64_t flags,
                     const struct fi_info *hints, struct fi_info **info)
{
    if (oxmpi_fi_load() != 0)
        return -FI_ENOSYS;
    return p_getinfo(version, node, service, flags, hints, info);
}

void oxmpi_fi_freeinfo(struct fi_info *info)
{
    /* Any info to free came from the loaded library. */
    if (oxmpi_fi_load() == 0)
        p_freeinfo(info);
}

const char *oxmpi_fi_strerror(int errnum)
{
    if (oxmpi_fi_load() != 0)
        return "libfabric could not be loaded";
    return p_strerror(errnum);
}

uint32_t oxmpi_fi_version(void)
{
    return oxmpi_fi_load() == 0 ? p_version() : 0;
}

int oxmpi_fi_fabric(struct fi_fabric_attr *attr, struct fid_fabric **fabric)
{
    if (oxmpi_fi_load() != 0)
        return -FI_ENOSYS;
    return p_fabric(attr, fabric, NULL);
}

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
int oxmpi_fi_setname(struct fid *fid, void *addr, size_t addrlen)
{ return fi_setname(fid, addr, addrlen); }
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
struct fi_info *oxmpi_fi_allocinfo(void)
{
    /* fi_allocinfo() is fi_dupinfo(NULL). */
    return oxmpi_fi_load() == 0 ? p_dupinfo(NULL) : NULL;
}
int oxmpi_fi_control(struct fid *fid, int command, void *arg)
{ return fi_control(fid, command, arg); }
