//! Raw bindings to libibverbs, the InfiniBand/RoCE verbs library of rdma-core.
//!
//! Two halves:
//!
//! * **Types** (`ibv_*` structures, unions and enums, `IBV_*` constants) generated at build
//!   time by bindgen from the system `<infiniband/verbs.h>` (package `libibverbs-dev` on
//!   Debian/Ubuntu, `rdma-core-devel` on Fedora/RHEL). Enum constants carry their C names
//!   (`IBV_QPS_RTS`, `IBV_WC_SUCCESS`, ...), typed with the enum's alias (`ibv_qp_state`, ...).
//! * **Functions**, loaded at run time: nothing links against libibverbs, so a program built
//!   with verbs support still starts on a machine without rdma-core. [`lib`] opens
//!   `libibverbs.so.1` with `dlopen` the first time it is called and resolves the calls the
//!   verbs fabric uses into a [`Lib`] of function pointers; later calls return the same table
//!   (or the same error). The library stays loaded for the life of the process.
//!
//! The data-path calls (`ibv_post_send`, `ibv_post_recv`, `ibv_post_srq_recv`, `ibv_poll_cq`)
//! are `static inline` in the header and go through the device context's operation table; the
//! functions of the same names here do exactly that.
//!
//! Nothing here is safe to call without reading the libibverbs man pages; the `verbs` backend
//! of `oxmpi-fabric` is the safe layer.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The bindgen output: types and constants only.
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    missing_docs,
    rust_2018_idioms
)]
#[allow(clippy::all, clippy::undocumented_unsafe_blocks)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;

/// The file [`lib`] opens.
pub const LIBRARY: &str = "libibverbs.so.1";

/// The symbol version of the current libibverbs ABI (the `IBVERBS_1.0` symbols of the same
/// names take older structure layouts and must not be used).
const SYMBOL_VERSION: &CStr = c"IBVERBS_1.1";

/// The libibverbs calls the verbs fabric uses, resolved from `libibverbs.so.1`.
///
/// Each field has the C prototype of the function of the same name, with one exception:
/// [`Lib::ibv_query_port`] is the exported symbol, which fills the leading, older part of
/// `struct ibv_port_attr` (everything up to and including `link_layer` and `flags`); zero the
/// structure before calling it, as the header's inline wrapper does.
#[derive(Clone, Copy)]
pub struct Lib {
    /// `struct ibv_device **ibv_get_device_list(int *num_devices)`.
    pub ibv_get_device_list: unsafe extern "C" fn(num_devices: *mut c_int) -> *mut *mut ibv_device,
    /// `void ibv_free_device_list(struct ibv_device **list)`.
    pub ibv_free_device_list: unsafe extern "C" fn(list: *mut *mut ibv_device),
    /// `const char *ibv_get_device_name(struct ibv_device *device)`.
    pub ibv_get_device_name: unsafe extern "C" fn(device: *mut ibv_device) -> *const c_char,
    /// `struct ibv_context *ibv_open_device(struct ibv_device *device)`.
    pub ibv_open_device: unsafe extern "C" fn(device: *mut ibv_device) -> *mut ibv_context,
    /// `int ibv_close_device(struct ibv_context *context)`.
    pub ibv_close_device: unsafe extern "C" fn(context: *mut ibv_context) -> c_int,
    /// `int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *attr)`.
    pub ibv_query_device:
        unsafe extern "C" fn(context: *mut ibv_context, attr: *mut ibv_device_attr) -> c_int,
    /// The exported `int ibv_query_port(struct ibv_context *, uint8_t port_num,
    /// struct _compat_ibv_port_attr *)` (the header hides it behind a macro). It writes the
    /// leading fields of `ibv_port_attr`; zero the structure first.
    pub ibv_query_port: unsafe extern "C" fn(
        context: *mut ibv_context,
        port: u8,
        attr: *mut ibv_port_attr,
    ) -> c_int,
    /// `int ibv_query_gid(struct ibv_context *, uint8_t port_num, int index, union ibv_gid *)`.
    pub ibv_query_gid: unsafe extern "C" fn(
        context: *mut ibv_context,
        port: u8,
        index: c_int,
        gid: *mut ibv_gid,
    ) -> c_int,
    /// `struct ibv_pd *ibv_alloc_pd(struct ibv_context *context)`.
    pub ibv_alloc_pd: unsafe extern "C" fn(context: *mut ibv_context) -> *mut ibv_pd,
    /// `int ibv_dealloc_pd(struct ibv_pd *pd)`.
    pub ibv_dealloc_pd: unsafe extern "C" fn(pd: *mut ibv_pd) -> c_int,
    /// The exported `struct ibv_mr *ibv_reg_mr(struct ibv_pd *, void *addr, size_t length,
    /// int access)` (newer headers wrap it in a macro that may call `ibv_reg_mr_iova2`; the
    /// exported function is the plain registration).
    pub ibv_reg_mr: unsafe extern "C" fn(
        pd: *mut ibv_pd,
        addr: *mut c_void,
        length: usize,
        access: c_int,
    ) -> *mut ibv_mr,
    /// `int ibv_dereg_mr(struct ibv_mr *mr)`.
    pub ibv_dereg_mr: unsafe extern "C" fn(mr: *mut ibv_mr) -> c_int,
    /// `struct ibv_cq *ibv_create_cq(struct ibv_context *, int cqe, void *cq_context,
    /// struct ibv_comp_channel *channel, int comp_vector)`.
    pub ibv_create_cq: unsafe extern "C" fn(
        context: *mut ibv_context,
        cqe: c_int,
        cq_context: *mut c_void,
        channel: *mut ibv_comp_channel,
        comp_vector: c_int,
    ) -> *mut ibv_cq,
    /// `int ibv_destroy_cq(struct ibv_cq *cq)`.
    pub ibv_destroy_cq: unsafe extern "C" fn(cq: *mut ibv_cq) -> c_int,
    /// `struct ibv_srq *ibv_create_srq(struct ibv_pd *, struct ibv_srq_init_attr *)`.
    pub ibv_create_srq:
        unsafe extern "C" fn(pd: *mut ibv_pd, attr: *mut ibv_srq_init_attr) -> *mut ibv_srq,
    /// `int ibv_destroy_srq(struct ibv_srq *srq)`.
    pub ibv_destroy_srq: unsafe extern "C" fn(srq: *mut ibv_srq) -> c_int,
    /// `struct ibv_qp *ibv_create_qp(struct ibv_pd *, struct ibv_qp_init_attr *)`.
    pub ibv_create_qp:
        unsafe extern "C" fn(pd: *mut ibv_pd, attr: *mut ibv_qp_init_attr) -> *mut ibv_qp,
    /// `int ibv_modify_qp(struct ibv_qp *, struct ibv_qp_attr *, int attr_mask)`.
    pub ibv_modify_qp:
        unsafe extern "C" fn(qp: *mut ibv_qp, attr: *mut ibv_qp_attr, attr_mask: c_int) -> c_int,
    /// `int ibv_query_qp(struct ibv_qp *, struct ibv_qp_attr *, int attr_mask,
    /// struct ibv_qp_init_attr *init_attr)`.
    pub ibv_query_qp: unsafe extern "C" fn(
        qp: *mut ibv_qp,
        attr: *mut ibv_qp_attr,
        attr_mask: c_int,
        init_attr: *mut ibv_qp_init_attr,
    ) -> c_int,
    /// `int ibv_destroy_qp(struct ibv_qp *qp)`.
    pub ibv_destroy_qp: unsafe extern "C" fn(qp: *mut ibv_qp) -> c_int,
    /// `const char *ibv_wc_status_str(enum ibv_wc_status status)`.
    pub ibv_wc_status_str: unsafe extern "C" fn(status: ibv_wc_status) -> *const c_char,
}

impl std::fmt::Debug for Lib {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lib(libibverbs.so.1)")
    }
}

/// The libibverbs function table, loading `libibverbs.so.1` on the first call.
///
/// The error (the same on every call) names what failed and says what to install.
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// The text of the last `dlopen`/`dlsym` error of this thread.
fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; it returns null or a NUL-terminated string owned by
    // the loader that stays valid until the next dl* call on this thread, and it is copied
    // out right away.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "no detail from dlerror".to_string()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// What [`lib`] returns when the library or one of its symbols is missing.
fn load_error(detail: &str) -> String {
    format!(
        "{LIBRARY} could not be loaded ({detail}); install rdma-core's libibverbs1 to use the \
         verbs fabric"
    )
}

/// Resolves `name` in `handle`, preferring the `IBVERBS_1.1` version of the symbol.
///
/// # Safety
///
/// `handle` must come from `dlopen` and still be open, and `T` must be the function-pointer
/// type of the C function `name` (the size is checked, the prototype cannot be).
unsafe fn symbol<T: Copy>(handle: *mut c_void, name: &CStr) -> Result<T, String> {
    if std::mem::size_of::<T>() != std::mem::size_of::<*mut c_void>() {
        return Err(load_error(&format!(
            "{} is bound with a type that is not a pointer",
            name.to_string_lossy()
        )));
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: handle is open (the caller's contract); both strings are NUL-terminated.
    let mut p = unsafe { libc::dlvsym(handle, name.as_ptr(), SYMBOL_VERSION.as_ptr()) };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let mut p: *mut c_void = {
        let _ = SYMBOL_VERSION;
        std::ptr::null_mut()
    };
    if p.is_null() {
        // SAFETY: as above; the unversioned lookup finds libraries built without symbol
        // versions.
        p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    }
    if p.is_null() {
        return Err(load_error(&format!(
            "symbol {} missing: {}",
            name.to_string_lossy(),
            dl_error()
        )));
    }
    // SAFETY: T is a function-pointer type (the caller's contract; same size as a data
    // pointer, checked above) and p is the non-null address of that function.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

fn load() -> Result<Lib, String> {
    let file = c"libibverbs.so.1";
    // SAFETY: file is NUL-terminated; dlopen has no other preconditions. The handle is never
    // closed, so every function pointer resolved from it stays valid for the process.
    let handle = unsafe { libc::dlopen(file.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(load_error(&dl_error()));
    }
    // SAFETY (every `sym!` below): handle is open for the life of the process and each field's
    // type is the prototype of the function of that name in <infiniband/verbs.h> (for
    // ibv_query_port and ibv_reg_mr, of the exported functions; see their fields).
    macro_rules! sym {
        ($name:ident) => {
            // SAFETY: see above.
            unsafe {
                symbol(
                    handle,
                    CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                        .map_err(|e| load_error(&e.to_string()))?,
                )?
            }
        };
    }
    Ok(Lib {
        ibv_get_device_list: sym!(ibv_get_device_list),
        ibv_free_device_list: sym!(ibv_free_device_list),
        ibv_get_device_name: sym!(ibv_get_device_name),
        ibv_open_device: sym!(ibv_open_device),
        ibv_close_device: sym!(ibv_close_device),
        ibv_query_device: sym!(ibv_query_device),
        ibv_query_port: sym!(ibv_query_port),
        ibv_query_gid: sym!(ibv_query_gid),
        ibv_alloc_pd: sym!(ibv_alloc_pd),
        ibv_dealloc_pd: sym!(ibv_dealloc_pd),
        ibv_reg_mr: sym!(ibv_reg_mr),
        ibv_dereg_mr: sym!(ibv_dereg_mr),
        ibv_create_cq: sym!(ibv_create_cq),
        ibv_destroy_cq: sym!(ibv_destroy_cq),
        ibv_create_srq: sym!(ibv_create_srq),
        ibv_destroy_srq: sym!(ibv_destroy_srq),
        ibv_create_qp: sym!(ibv_create_qp),
        ibv_modify_qp: sym!(ibv_modify_qp),
        ibv_query_qp: sym!(ibv_query_qp),
        ibv_destroy_qp: sym!(ibv_destroy_qp),
        ibv_wc_status_str: sym!(ibv_wc_status_str),
    })
}

/// `ibv_post_send`: posts a chain of send work requests through the queue pair's context.
///
/// Returns 0 or an errno value (`*bad_wr` then points at the first request not posted).
/// `EOPNOTSUPP` when the provider has no `post_send`.
///
/// # Safety
///
/// `qp` must be a live queue pair from `ibv_create_qp`; `wr` a valid chain of work requests
/// whose scatter-gather lists (and, unless inline, the memory they describe) stay valid as
/// libibverbs requires; `bad_wr` writable.
pub unsafe fn ibv_post_send(
    qp: *mut ibv_qp,
    wr: *mut ibv_send_wr,
    bad_wr: *mut *mut ibv_send_wr,
) -> c_int {
    // SAFETY: qp is live (the caller's contract), so qp->context points at its open device
    // context, whose ops table the provider filled in.
    let post = unsafe { (*(*qp).context).ops.post_send };
    match post {
        // SAFETY: the provider's post_send with the arguments the caller vouched for.
        Some(f) => unsafe { f(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_recv`: posts a chain of receive work requests to a queue pair's own receive
/// queue (not usable on a queue pair attached to a shared receive queue).
///
/// Returns 0 or an errno value.
///
/// # Safety
///
/// As [`ibv_post_send`], for receive work requests.
pub unsafe fn ibv_post_recv(
    qp: *mut ibv_qp,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: qp is live (the caller's contract); its context's ops table is the provider's.
    let post = unsafe { (*(*qp).context).ops.post_recv };
    match post {
        // SAFETY: the provider's post_recv with the arguments the caller vouched for.
        Some(f) => unsafe { f(qp, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_post_srq_recv`: posts a chain of receive work requests to a shared receive queue.
///
/// Returns 0 or an errno value.
///
/// # Safety
///
/// `srq` must be a live shared receive queue from `ibv_create_srq`; `wr` a valid chain whose
/// buffers stay registered and untouched until their completions; `bad_wr` writable.
pub unsafe fn ibv_post_srq_recv(
    srq: *mut ibv_srq,
    wr: *mut ibv_recv_wr,
    bad_wr: *mut *mut ibv_recv_wr,
) -> c_int {
    // SAFETY: srq is live (the caller's contract); its context's ops table is the provider's.
    let post = unsafe { (*(*srq).context).ops.post_srq_recv };
    match post {
        // SAFETY: the provider's post_srq_recv with the arguments the caller vouched for.
        Some(f) => unsafe { f(srq, wr, bad_wr) },
        None => libc::EOPNOTSUPP,
    }
}

/// `ibv_poll_cq`: takes up to `num_entries` completions into `wc`.
///
/// Returns how many (0 when the queue is empty) or a negative value on failure.
///
/// # Safety
///
/// `cq` must be a live completion queue from `ibv_create_cq` and `wc` must have room for
/// `num_entries` entries.
pub unsafe fn ibv_poll_cq(cq: *mut ibv_cq, num_entries: c_int, wc: *mut ibv_wc) -> c_int {
    // SAFETY: cq is live (the caller's contract); its context's ops table is the provider's.
    let poll = unsafe { (*(*cq).context).ops.poll_cq };
    match poll {
        // SAFETY: the provider's poll_cq with the arguments the caller vouched for.
        Some(f) => unsafe { f(cq, num_entries, wc) },
        None => -libc::EOPNOTSUPP,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader either gives a table whose device list works (this machine has the library
    /// and no device, so the count is usually 0) or the plain error.
    #[test]
    fn loads_or_says_what_to_install() {
        match lib() {
            Ok(l) => {
                let mut n: c_int = -1;
                // SAFETY: ibv_get_device_list writes the count and returns a list (or null
                // with errno set), freed below.
                let list = unsafe { (l.ibv_get_device_list)(&mut n) };
                if list.is_null() {
                    // No kernel support at all: libibverbs reports it as an error.
                    let e = std::io::Error::last_os_error();
                    eprintln!("ibv_get_device_list failed: {e}");
                } else {
                    assert!(n >= 0, "device count {n}");
                    for i in 0..n as usize {
                        // SAFETY: list holds n non-null device pointers, then a null.
                        let name = unsafe { CStr::from_ptr((l.ibv_get_device_name)(*list.add(i))) };
                        eprintln!("device {i}: {}", name.to_string_lossy());
                    }
                    // SAFETY: list came from ibv_get_device_list and is freed once.
                    unsafe { (l.ibv_free_device_list)(list) };
                }
                // The status strings come from the library.
                // SAFETY: ibv_wc_status_str returns a static string for any value.
                let s = unsafe { CStr::from_ptr((l.ibv_wc_status_str)(IBV_WC_SUCCESS)) };
                assert_eq!(s.to_str(), Ok("success"));
                // Same table on every call.
                assert!(std::ptr::eq(l, lib().unwrap()));
            }
            Err(e) => {
                assert!(
                    e.starts_with("libibverbs.so.1 could not be loaded ("),
                    "{e}"
                );
                assert!(e.ends_with("install rdma-core's libibverbs1 to use the verbs fabric"));
            }
        }
    }

    #[test]
    fn missing_library_error_is_plain() {
        let e = load_error("libibverbs.so.1: cannot open shared object file");
        assert_eq!(
            e,
            "libibverbs.so.1 could not be loaded (libibverbs.so.1: cannot open shared object \
             file); install rdma-core's libibverbs1 to use the verbs fabric"
        );
    }

    #[test]
    fn constants_match_the_abi() {
        assert_eq!(IBV_WC_SUCCESS, 0);
        assert_eq!(IBV_WC_RECV, 128);
        assert_eq!(IBV_QPS_RTS, 3);
        assert_eq!(IBV_MTU_4096, 5);
        assert_eq!(IBV_ACCESS_REMOTE_READ, 4);
        assert_eq!(IBV_LINK_LAYER_ETHERNET, 2);
        assert_eq!(std::mem::size_of::<ibv_wc>(), 48);
    }
}
