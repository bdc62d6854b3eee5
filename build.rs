//! Release binaries are linked with `link/symbol-order.txt`: the functions portcullis runs at
//! start-up and while serving, placed next to each other so that the pages the kernel maps
//! around each executed one (64 KiB fault-around, whole large folios) hold mostly code that runs
//! (see bench/order-symbols.sh; RSS after start 9.5-10.3 -> 7.9 MiB).
//!
//! Only where rustc links with its bundled lld: release builds for x86_64 Linux GNU with Rust
//! 1.90 or later and no linker of the user's own choosing. `PORTCULLIS_NO_SYMBOL_ORDER=1` turns
//! it off in any case (e.g. for a linker without `--symbol-ordering-file`).

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=PORTCULLIS_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let dir = var("CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("link/symbol-order.txt");
    let wanted = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && !matches!(
            var("PORTCULLIS_NO_SYMBOL_ORDER").as_str(),
            "1" | "true" | "yes"
        )
        && var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        && order.is_file();
    if wanted && rustc_minor().is_some_and(|minor| minor >= 90) {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the compiler building us (`rustc 1.95.0 (...)` -> 95).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}
