//! Helpers shared by the end-to-end tests: where the built binaries are.

use std::path::PathBuf;

/// Folder holding the workspace's binaries of the profile the tests run in
/// (`target/<profile>`); override with `PULLBACK_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PULLBACK_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(|p| p.to_path_buf())
        .expect("target/<profile> folder")
}

/// Path of one workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace` (same profile) before the tests",
        p.display()
    );
    p
}
