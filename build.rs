//! Release binaries are linked with `link/symbol-order.txt`: the functions portcullis runs at
//! start-up and while serving, placed next to each other so that the 64 KiB windows the kernel
//! maps around each executed page hold mostly code that runs (see bench/order-symbols.sh).
//!
//! Only for release builds on x86_64 Linux GNU, where rustc links with its bundled lld (the
//! default since Rust 1.90); `PORTCULLIS_NO_SYMBOL_ORDER=1` turns it off, e.g. for a custom
//! linker without `--symbol-ordering-file`.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_NO_SYMBOL_ORDER");
    let target = env::var("TARGET").unwrap_or_default();
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    let lld_target = target == "x86_64-unknown-linux-gnu";
    let off = env::var_os("PORTCULLIS_NO_SYMBOL_ORDER").is_some_and(|v| v != "0");
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order = Path::new(&dir).join("link/symbol-order.txt");
    if release && lld_target && !off && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
