//! Finds `<infiniband/verbs.h>` (include directories from pkg-config's `libibverbs` where it
//! is known, then the usual system directories) and generates the libibverbs *types* with
//! bindgen. Nothing is linked: the functions are loaded from `libibverbs.so.1` at run time.

use std::env;
use std::path::{Path, PathBuf};

const HEADER: &str = "infiniband/verbs.h";

fn main() {
    println!("cargo:rerun-if-env-changed=OXMPI_VERBS_INCLUDE_DIR");
    // Include directories: an explicit override, pkg-config's (without emitting any link
    // directives), then the system's.
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = env::var_os("OXMPI_VERBS_INCLUDE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(lib) = pkg_config::Config::new()
        .cargo_metadata(false)
        .probe("libibverbs")
    {
        dirs.extend(lib.include_paths);
    }
    let system = [
        PathBuf::from("/usr/local/include"),
        PathBuf::from("/usr/include"),
    ];
    let Some(found) = dirs
        .iter()
        .chain(system.iter())
        .find(|d| d.join(HEADER).is_file())
        .cloned()
    else {
        eprintln!(
            "\noxmpi-verbs-sys: the libibverbs header <{HEADER}> was not found (looked in: {}).\n\
             Install its development files: `apt-get install libibverbs-dev` on Debian/Ubuntu, \
             `dnf install rdma-core-devel` on Fedora/RHEL, or set OXMPI_VERBS_INCLUDE_DIR to the \
             directory holding {HEADER}.\nBuilding oxmpi without the `verbs` feature needs none \
             of this.\n",
            dirs.iter()
                .chain(system.iter())
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::process::exit(1);
    };
    println!("cargo:rerun-if-changed={}", found.join(HEADER).display());

    let mut gen = bindgen::Builder::default()
        .header_contents("oxmpi_verbs.h", &format!("#include <{HEADER}>\n"))
        // Types and constants only: the functions are loaded with dlsym (see src/lib.rs).
        .allowlist_type("ibv_.*")
        .allowlist_var("IBV_.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for d in &dirs {
        gen = gen.clang_arg(format!("-I{}", d.display()));
    }
    if !dirs.contains(&found) {
        gen = gen.clang_arg(format!("-I{}", found.display()));
    }
    // bindgen panics (rather than returning an error) when it cannot load libclang.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gen.generate()));
    let bindings = match result {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            eprintln!(
                "\noxmpi-verbs-sys: generating the libibverbs bindings from {} failed ({e}).\n\
                 bindgen needs libclang: `apt-get install libclang-dev` on Debian/Ubuntu, \
                 `dnf install clang-devel` on Fedora/RHEL.\n",
                found.join(HEADER).display()
            );
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!(
                "\noxmpi-verbs-sys: bindgen could not load libclang (see the message above).\n\
                 Install it: `apt-get install libclang-dev` on Debian/Ubuntu, `dnf install \
                 clang-devel` on Fedora/RHEL, or set LIBCLANG_PATH to the directory holding \
                 libclang.so.\n"
            );
            std::process::exit(1);
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    write(&bindings, &out.join("bindings.rs"));
}

fn write(bindings: &bindgen::Bindings, path: &Path) {
    bindings
        .write_to_file(path)
        .expect("writing bindings.rs to OUT_DIR");
}
