//! Finds the system libfabric's headers with pkg-config, compiles the C shim (the run-time
//! loader and the static inline calls), and generates the bindings with bindgen. Nothing links
//! to libfabric: the shim loads it with `dlopen` when a program first uses it.

use std::env;
use std::path::PathBuf;

/// Oldest libfabric whose API these bindings use.
const MIN_VERSION: &str = "1.11";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=src/wrapper.c");
    let lib = match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .cargo_metadata(false)
        .probe("libfabric")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "\noxmpi-ofi-sys: libfabric {MIN_VERSION} or later was not found with pkg-config \
                 ({e}).\nInstall its development files: `apt-get install libfabric-dev` on \
                 Debian/Ubuntu, `dnf install libfabric-devel` on Fedora/RHEL, or set \
                 PKG_CONFIG_PATH to the directory holding libfabric.pc.\nBuilding oxmpi without \
                 the `ofi` feature needs none of this.\n"
            );
            std::process::exit(1);
        }
    };

    let mut shim = cc::Build::new();
    shim.file("src/wrapper.c").warnings(true);
    for p in &lib.include_paths {
        shim.include(p);
    }
    shim.compile("oxmpi_ofi_shim");
    // dlopen lives in libc since glibc 2.34; older C libraries keep it in libdl.
    println!("cargo:rustc-link-lib=dl");

    let mut gen = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("oxmpi_fi_.*")
        .allowlist_type("fi_.*|fid_.*|fid")
        .allowlist_var("FI_.*|FID_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for p in &lib.include_paths {
        gen = gen.clang_arg(format!("-I{}", p.display()));
    }
    let bindings = match gen.generate() {
        Ok(b) => b,
        Err(e) => {
            eprintln!(
                "\noxmpi-ofi-sys: generating the libfabric bindings failed ({e}).\nbindgen needs \
                 libclang: `apt-get install libclang-dev` on Debian/Ubuntu.\n"
            );
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs to OUT_DIR");
}
