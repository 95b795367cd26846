//! `cargo metadata` of the workspace, as the tests read it: offline and locked, for this
//! machine's platform only. Offline, cargo has fetched only what builds here: the packages of
//! other platforms in Cargo.lock (wasm's, say) are not on a fresh machine, and without the filter
//! cargo asks for them and fails.

/// The workspace's metadata (`cargo metadata --format-version 1`), its resolve filtered to the
/// host platform.
pub fn workspace() -> serde_json::Value {
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let metadata = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        metadata.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    serde_json::from_slice(&metadata.stdout).expect("cargo metadata prints JSON")
}
