//! Replays the fuzz targets' inputs (`src/fuzzing`): the seeds, the committed corpora
//! (`fuzz/corpus/<target>/`, inputs that reached new coverage while fuzzing) and the inputs of
//! fixed findings (`fuzz/regressions/<target>/`). The same checks run as under libFuzzer, in a
//! few seconds, without sanitizers; fuzzing itself is `cargo fuzz run` (README, "Fuzzing").

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use portcullis::fuzzing;

/// Every target's inputs, in one process: the targets share a document root made for the
/// process (and removed at the end).
#[test]
fn every_target_passes_its_corpus() {
    let mut failed = Vec::new();
    for (target, _) in fuzzing::TARGETS {
        failed.extend(replay(target));
    }
    fuzzing::remove_fixture();
    assert!(failed.is_empty(), "failing inputs: {failed:#?}");
}

/// Runs `target` on its seeds and files; returns the inputs it failed on.
fn replay(target: &str) -> Vec<String> {
    let (_, run) = fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            files.push(entry.expect("a directory entry").path());
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus for {target} in {}",
        root.display()
    );
    let mut failed = Vec::new();
    let seeds = fuzzing::seeds(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (i, seed) in seeds.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| run(seed))).is_err() {
            failed.push(format!("{target}: seed {i}"));
        }
    }
    for file in &files {
        let data = std::fs::read(file).expect("readable");
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    failed
}
