//! What the real-browser tests need: Debian's chromium and playwright-core (the library only,
//! driving the system's chromium; `.ci/run` installs both).

use std::path::PathBuf;

use super::require_tool;

/// The chromium binary: `CHROMIUM`, else `chromium` on the `PATH` (the test fails without it).
pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| require_tool("chromium"), PathBuf::from)
}

/// The playwright-core package: `PLAYWRIGHT_CORE`, else tests/browser/node_modules.
pub fn playwright_core() -> PathBuf {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/browser/node_modules/playwright-core");
    match std::env::var_os("PLAYWRIGHT_CORE") {
        Some(p) => PathBuf::from(p),
        None if local.is_dir() => local,
        None => panic!(
            "playwright-core is missing: run `npm install --prefix tests/browser playwright-core` (as .ci/run does) or set PLAYWRIGHT_CORE"
        ),
    }
}
