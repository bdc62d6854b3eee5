//! Runs one fuzz target on input files, without libFuzzer or sanitizers (a plain debug build,
//! full backtraces): for looking into a failing input.
//!
//! ```sh
//! cargo run --example fuzz_one -- h2_connection fuzz/artifacts/h2_connection/crash-…
//! ```

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: fuzz_one TARGET FILE...");
        std::process::exit(2);
    };
    let Some((_, run)) = portcullis::fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
    else {
        eprintln!("no target {target:?}");
        std::process::exit(2);
    };
    for file in args {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        eprintln!("{target} {file} ({} bytes)", data.len());
        run(&data);
    }
    portcullis::fuzzing::remove_fixture();
}
