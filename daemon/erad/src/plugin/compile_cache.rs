//! The on-disk compile cache's integrity check. Deserializing a compiled
//! component runs its machine code unchecked, so an entry is used only if
//! its sha256 is the one recorded, in a sidecar file, when erad wrote it.
//! The check hashes the bytes it then hands to wasmtime (read once into
//! memory), so a file swapped between check and load cannot slip through.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where the sha256 of a cache entry is recorded.
fn digest_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// The entry's bytes if it exists and matches its recorded digest; a
/// mismatch (or no digest) is logged and reads as no entry, so the plugin is
/// compiled again and the entry overwritten.
pub(super) fn read_verified(plugin: &str, entry: &Path) -> Option<Vec<u8>> {
    let bytes = match std::fs::read(entry) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(plugin, path = %entry.display(), "cannot read the compile cache entry: {e}; recompiling");
            return None;
        }
    };
    let recorded = std::fs::read_to_string(digest_path(entry)).unwrap_or_default();
    let actual = hex::encode(Sha256::digest(&bytes));
    if recorded.trim() != actual {
        tracing::warn!(
            plugin,
            path = %entry.display(),
            "compile cache entry does not match the digest recorded when it was compiled; recompiling"
        );
        return None;
    }
    Some(bytes)
}

/// Writes an entry and then its digest, each through a temp file and a
/// rename: a crash in between leaves an entry whose digest does not match,
/// which is recompiled.
pub(super) fn write(entry: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let put = |path: &Path, data: &[u8]| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, path)
    };
    put(entry, bytes)?;
    put(&digest_path(entry), format!("{}\n", hex::encode(Sha256::digest(bytes))).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::PluginHost;
    use super::*;

    /// `(component)`: the smallest valid component.
    const EMPTY: &[u8] = b"\0asm\x0d\0\x01\0";
    /// `(component (core module))`: another one, compiled differently.
    const WITH_MODULE: &[u8] = b"\0asm\x0d\0\x01\0\x01\x08\0asm\x01\0\0\0";

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut all: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_tampered_cache_entry_is_recompiled_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let runtimes =
            crate::plugin::RuntimeHome { root: dir.path().join("runtimes"), instance: "t".into(), shim: None };
        let host = PluginHost::new(dir.path(), runtimes).unwrap();
        let src = Path::new("p.wasm");
        let first = host.compile("p", src, EMPTY, "sha256:aa").unwrap().serialize().unwrap();
        let other = host.compile("q", src, WITH_MODULE, "sha256:bb").unwrap().serialize().unwrap();
        assert_ne!(first, other);
        let entry = entries(dir.path()).into_iter().find(|p| p.to_string_lossy().contains("/aa-")).unwrap();
        assert_eq!(read_verified("p", &entry).unwrap(), first);

        // Swap in another valid compiled component: wasmtime itself would
        // load it, so only the recorded digest can tell.
        std::fs::write(&entry, &other).unwrap();
        assert!(read_verified("p", &entry).is_none());
        let loaded = host.compile("p", src, EMPTY, "sha256:aa").unwrap().serialize().unwrap();
        assert_eq!(loaded, first, "the plugin was compiled again, not taken from the tampered entry");
        assert_eq!(std::fs::read(&entry).unwrap(), first, "and the entry overwritten");
        assert_eq!(read_verified("p", &entry).unwrap(), first);

        // An entry with no recorded digest (an older erad, a crash) is recompiled too.
        std::fs::remove_file(digest_path(&entry)).unwrap();
        std::fs::write(&entry, &other).unwrap();
        assert_eq!(host.compile("p", src, EMPTY, "sha256:aa").unwrap().serialize().unwrap(), first);
    }
}
