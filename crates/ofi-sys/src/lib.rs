//! Raw FFI bindings to the system libfabric (1.11 and later), generated at build time by bindgen
//! from the installed headers (found with pkg-config).
//!
//! libfabric implements most of its API as `static inline` functions calling through the
//! objects' operation tables (`fi_endpoint`, `fi_send`, `fi_cq_read`, ...); bindgen cannot bind
//! those, so `src/wrapper.c` compiles an out-of-line copy of each, prefixed `oxmpi_fi_`. Nothing
//! here is safe to call without reading libfabric's man pages; the `ofi` backend in
//! `oxmpi-fabric` is the safe layer.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all, clippy::undocumented_unsafe_blocks)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

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
        // SAFETY: fi_version takes no arguments and only returns a constant.
        let v = unsafe { fi_version() };
        assert!(v >= make_version(1, 11), "libfabric version {v:#x}");
    }
}
