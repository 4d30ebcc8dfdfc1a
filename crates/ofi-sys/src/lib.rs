//! Raw FFI bindings to the system libfabric (1.11 and later), generated at build time by bindgen
//! from the installed headers (found with pkg-config).
//!
//! - **Loaded at run time.** Nothing links to libfabric. `src/wrapper.c` opens
//!   `libfabric.so.1` with `dlopen` the first time one of its calls is needed (or [`load`] is
//!   called), so a program built with these bindings starts on a machine without libfabric,
//!   and one that never uses or probes the `ofi` fabric never loads the library nor the
//!   provider libraries it pulls in (Debian's loads PSM2, whose signal handlers would turn a
//!   rank's SIGABRT into `exit(1)`). Without the library the exported calls fail
//!   (`-FI_ENOSYS`, null).
//! - **Static inline calls.** libfabric implements most of its API as `static inline` functions
//!   calling through the objects' operation tables (`fi_endpoint`, `fi_send`, `fi_cq_read`,
//!   ...); bindgen cannot bind those, so the shim compiles an out-of-line copy of each,
//!   prefixed `oxmpi_fi_`.
//!
//! Nothing here is safe to call without reading libfabric's man pages; the `ofi` backend in
//! `oxmpi-fabric` is the safe layer.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

pub use self::{
    oxmpi_fi_fabric as fi_fabric, oxmpi_fi_freeinfo as fi_freeinfo, oxmpi_fi_getinfo as fi_getinfo,
    oxmpi_fi_strerror as fi_strerror, oxmpi_fi_version as fi_version,
};

/// Loads `libfabric.so.1` (once; later calls return the first result). The error is the
/// loader's message, e.g. that the file is not installed.
pub fn load() -> Result<(), String> {
    // SAFETY: oxmpi_fi_load has no preconditions and is thread-safe (pthread_once); the error
    // text is a NUL-terminated string in a static buffer written only before the load
    // completed.
    unsafe {
        if oxmpi_fi_load() == 0 {
            Ok(())
        } else {
            Err(std::ffi::CStr::from_ptr(oxmpi_fi_load_error())
                .to_string_lossy()
                .into_owned())
        }
    }
}

/// `FI_VERSION(major, minor)`, a macro in the headers.
pub const fn make_version(major: u32, minor: u32) -> u32 {
    (major << 16) | minor
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library loads and reports a version at least the one these bindings need.
    #[test]
    fn library_version() {
        load().expect("libfabric.so.1 loads");
        // SAFETY: fi_version takes no arguments and only returns a constant.
        let v = unsafe { fi_version() };
        assert!(v >= make_version(1, 11), "libfabric version {v:#x}");
    }
}
