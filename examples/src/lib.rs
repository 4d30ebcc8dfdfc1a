//! The example programs live beside this file (`hello.rs`, `p2p_dict.rs`, ...) and are built
//! with `cargo build --release --examples`; `tests/run_examples.rs` runs each through `oxrun`
//! and checks what it prints.
