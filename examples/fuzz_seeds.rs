//! Writes the fuzz targets' seed inputs (`portcullis::fuzzing::seeds`) into
//! `fuzz/seeds/<target>/`, where `cargo fuzz run <target> fuzz/corpus/<target> fuzz/seeds/<target>`
//! starts from them (README, "Fuzzing").
//!
//! ```sh
//! cargo run --example fuzz_seeds
//! ```

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (target, _) in portcullis::fuzzing::TARGETS {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        let seeds = portcullis::fuzzing::seeds(target);
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), seed)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    portcullis::fuzzing::remove_fixture();
    Ok(())
}
