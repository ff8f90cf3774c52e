#![allow(clippy::unwrap_used)]
//! Builds the plugin workspace (`plugins/`) for wasm32-wasip2 once per test
//! build and exports each component's path as `ERA_PLUGIN_<NAME>`, like
//! wasmtime's test-programs do for its guest fixtures.

use std::path::PathBuf;
use std::process::Command;

const PLUGINS: &[(&str, &str)] = &[
    ("NOOP", "era_fixture_noop"),
    ("TRAP", "era_fixture_trap"),
    ("HANG", "era_fixture_hang"),
    ("HOG", "era_fixture_hog"),
    ("UNHEALTHY", "era_fixture_unhealthy"),
    ("EXEC", "era_fixture_exec"),
    ("HOSTILE", "era_fixture_hostile"),
    ("HOSTILE_LXC", "era_fixture_hostile_lxc"),
    ("HTTP", "era_fixture_http"),
    ("CONTAINER", "era_plugin_container"),
    ("LXC", "era_plugin_lxc"),
    ("KUBERNETES", "era_plugin_kubernetes"),
    ("PROXMOX", "era_plugin_proxmox"),
];

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("..");
    let plugins = root.join("plugins");
    for dir in [
        "plugins/sdk",
        "plugins/fixtures",
        "plugins/container",
        "plugins/lxc",
        "plugins/kubernetes",
        "plugins/proxmox",
        "plugins/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // Keep the plugins' build next to the main one (a persistent target dir
    // in CI), but apart from it: a different target and profile. One per
    // checkout: cargo names a path package's build by its path relative to
    // the workspace, so two worktrees sharing a target dir would take each
    // other's plugin builds for up to date.
    // scripts/build-plugins names it the same way (sha256 of the checkout's path).
    let checkout = {
        use sha2::Digest;
        let path = root.canonicalize().unwrap_or_else(|_| root.clone());
        hex::encode(sha2::Sha256::digest(path.as_os_str().as_encoded_bytes()))[..8].to_string()
    };
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t).join(format!("wasm-plugins-{checkout}")),
        None => plugins.join("target"),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&plugins)
        .args(["build", "--release", "--workspace", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir)
        // The host build's flags are not for the wasm target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cannot run cargo to build the plugins");
    assert!(
        status.success(),
        "building plugins/ failed; is the wasm32-wasip2 target installed? (rustup target add wasm32-wasip2)"
    );
    for (name, file) in PLUGINS {
        let path = target_dir.join("wasm32-wasip2/release").join(format!("{file}.wasm"));
        assert!(path.is_file(), "{} was not built", path.display());
        println!("cargo:rustc-env=ERA_PLUGIN_{name}={}", path.display());
    }
}
