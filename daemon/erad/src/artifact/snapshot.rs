//! Unpacked images: one read-only root filesystem per image manifest, made
//! once and shared by every revision that runs the image, each through an
//! overlay mount of its own ([`crate::prepare::rootfs`]), as containerd's
//! overlayfs snapshotter does. An apply of an image erad has run before
//! then unpacks nothing.
//!
//! A snapshot is unpacked into a temp dir (with the same checks as any
//! unpack, [`super::unpack`]), flushed to disk, and only then renamed to
//! `snapshots/<manifest hex>`: a snapshot under its name is always whole.
//! Nothing writes to it after that: a revision's changes go to its overlay's
//! upper dir. The GC removes snapshots whose manifest it removes. Besides
//! the image's own files, a snapshot has the mount points every runtime uses
//! (`/proc`, `/sys`, `/dev`, `/etc/hosts`...) where the image lacks them.

use super::unpack::{Layer, UnpackError, UnpackPolicy, unpack_layers_until};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

/// Where the snapshots live (`<content store>/snapshots`).
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("image manifest {0:?} is not a sha256 digest")]
    Digest(String),
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

// A snapshot's name is never anything but a digest's hex.
use super::sha256_hex as hex_of;

const TEMP_PREFIX: &str = ".unpacking-";
/// A snapshot the GC is removing: renamed first, so a crash mid-removal
/// never leaves half an image under a snapshot's name.
const REMOVING_PREFIX: &str = ".removing-";

/// Where runtimes mount things in every container: made in the snapshot
/// when the image lacks them (as Docker's init layer does), so a runtime
/// never creates them through a revision's overlay (each creation there
/// copies a directory up; runc started ~3 to 10 ms slower on an overlay
/// without them, as fast as on a plain copy with them).
const MOUNT_POINT_DIRS: [&str; 4] = ["proc", "sys", "dev", "etc"];
const MOUNT_POINT_FILES: [&str; 3] = ["etc/resolv.conf", "etc/hosts", "etc/hostname"];

/// Adds the missing [`MOUNT_POINT_DIRS`] and (empty) [`MOUNT_POINT_FILES`]
/// to an unpacked root. Whatever the image has at those paths (a file, a
/// link) is left as it is.
fn add_mount_points(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let missing = |p: &Path| matches!(std::fs::symlink_metadata(p), Err(e) if e.kind() == io::ErrorKind::NotFound);
    for d in MOUNT_POINT_DIRS {
        let p = root.join(d);
        if missing(&p) {
            std::fs::DirBuilder::new().mode(0o755).create(&p)?;
        }
    }
    for f in MOUNT_POINT_FILES {
        let p = root.join(f);
        let parent_is_dir = p.parent().and_then(|d| std::fs::symlink_metadata(d).ok()).is_some_and(|m| m.is_dir());
        if parent_is_dir && missing(&p) {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&p)?;
        }
    }
    Ok(())
}

impl Snapshots {
    /// Opens the snapshot dir, removing unpacks a crash interrupted.
    pub fn open(dir: &Path) -> Result<Snapshots, SnapshotError> {
        use std::os::unix::fs::DirBuilderExt;
        let io_err = |source| SnapshotError::Io { path: dir.to_path_buf(), source };
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err)?;
        for e in std::fs::read_dir(dir).map_err(io_err)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) || name.starts_with(REMOVING_PREFIX) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Snapshots { dir: dir.to_path_buf() })
    }

    /// Where the snapshot of the image with this manifest is (or would be).
    pub fn path(&self, manifest: &str) -> Result<PathBuf, SnapshotError> {
        hex_of(manifest).map(|h| self.dir.join(h)).ok_or_else(|| SnapshotError::Digest(manifest.to_string()))
    }

    /// The snapshot of the image, unpacked first if there is none yet.
    /// Two callers may unpack the same image at once: the first rename
    /// wins and the other's copy is dropped. `cancel` stops an unpack at its
    /// next entry (nothing is left behind).
    pub fn ensure(
        &self,
        manifest: &str,
        layers: &[Layer],
        policy: &UnpackPolicy,
        cancel: &AtomicBool,
    ) -> Result<PathBuf, SnapshotError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self.path(manifest)?;
        if path.is_dir() {
            return Ok(path);
        }
        let hex = hex_of(manifest).unwrap_or_default();
        let temp =
            self.dir.join(format!("{TEMP_PREFIX}{hex}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let made = (|| {
            unpack_layers_until(layers, &temp, policy, cancel)?;
            let io_err = |source| SnapshotError::Io { path: temp.clone(), source };
            add_mount_points(&temp).map_err(io_err)?;
            // Whole on disk before it has its name: a power cut never leaves
            // a named snapshot with empty files.
            let dir = std::fs::File::open(&temp).map_err(io_err)?;
            rustix::fs::syncfs(&dir).map_err(|e| io_err(e.into()))?;
            match std::fs::rename(&temp, &path) {
                Ok(()) => {}
                // Another unpack of the same image named its copy first.
                Err(_) if path.is_dir() => {
                    let _ = std::fs::remove_dir_all(&temp);
                }
                Err(source) => return Err(SnapshotError::Io { path: path.clone(), source }),
            }
            if let Ok(d) = std::fs::File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&temp);
        }
        made.map(|()| path)
    }

    /// Removes every snapshot whose manifest is not in `keep` (the content
    /// GC's closure) and that is older than `grace`. Returns how many went.
    pub fn collect(&self, keep: &HashSet<String>, grace: Duration) -> Result<u64, SnapshotError> {
        let io_err = |source| SnapshotError::Io { path: self.dir.clone(), source };
        let now = SystemTime::now();
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).map_err(io_err)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digest = format!("sha256:{name}");
            if hex_of(&digest).is_none() || keep.contains(&digest) {
                continue;
            }
            let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| now.duration_since(m).ok());
            if age.unwrap_or_default() < grace {
                continue;
            }
            let gone = self.dir.join(format!("{REMOVING_PREFIX}{name}"));
            std::fs::rename(e.path(), &gone).map_err(|source| SnapshotError::Io { path: e.path(), source })?;
            std::fs::remove_dir_all(&gone).map_err(|source| SnapshotError::Io { path: gone.clone(), source })?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// A tar layer; names are written raw (a hostile one too).
    fn layer(dir: &Path, files: &[(&str, &[u8])]) -> Layer {
        let path = dir.join("layer.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        Layer { digest: "sha256:layer".into(), media_type: "application/vnd.oci.image.layer.v1.tar".into(), path }
    }

    #[test]
    fn an_image_is_unpacked_once_and_a_half_done_unpack_is_gone_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&dir.path().join("snapshots")).unwrap();
        let l = layer(dir.path(), &[("etc/hello", b"hi")]);
        let p = snaps.ensure(A, std::slice::from_ref(&l), &UnpackPolicy::default(), &AtomicBool::new(false)).unwrap();
        assert_eq!(std::fs::read(p.join("etc/hello")).unwrap(), b"hi");
        // The runtimes' mount points are there, empty.
        for d in MOUNT_POINT_DIRS {
            assert!(p.join(d).is_dir(), "{d}");
        }
        assert_eq!(std::fs::read(p.join("etc/hosts")).unwrap(), b"");
        // The second ensure finds it: a file written into it shows it was not redone.
        std::fs::write(p.join("mark"), b"").unwrap();
        let again = snaps.ensure(A, &[l], &UnpackPolicy::default(), &AtomicBool::new(false)).unwrap();
        assert!(again.join("mark").exists(), "the snapshot was made once");

        let stale = dir.path().join("snapshots").join(format!("{TEMP_PREFIX}{}-1-0", &B[7..]));
        std::fs::create_dir_all(stale.join("etc")).unwrap();
        let half_removed = dir.path().join("snapshots").join(format!("{REMOVING_PREFIX}{}", &B[7..]));
        std::fs::create_dir_all(half_removed.join("etc")).unwrap();
        Snapshots::open(&dir.path().join("snapshots")).unwrap();
        assert!(!stale.exists(), "an unpack a crash cut off is removed at open");
        assert!(!half_removed.exists(), "so is a removal a crash cut off");
        assert!(p.exists());
    }

    #[test]
    fn mount_points_never_replace_what_the_image_has() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), b"127.0.0.1 image").unwrap();
        std::os::unix::fs::symlink("/outside", root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/outside-file", root.join("etc/resolv.conf")).unwrap();
        add_mount_points(&root).unwrap();
        assert_eq!(std::fs::read(root.join("etc/hosts")).unwrap(), b"127.0.0.1 image");
        assert!(std::fs::symlink_metadata(root.join("proc")).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap().file_type().is_symlink());
        assert!(!Path::new("/outside-file").exists());
        assert!(root.join("etc/hostname").is_file() && root.join("dev").is_dir());
    }

    #[test]
    fn a_cancelled_or_failed_unpack_leaves_nothing_under_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&dir.path().join("snapshots")).unwrap();
        let l = layer(dir.path(), &[("a", b"1")]);
        let err = snaps.ensure(A, &[l], &UnpackPolicy::default(), &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, SnapshotError::Unpack(UnpackError::Cancelled)), "{err}");
        let hostile = layer(dir.path(), &[("../escape", b"x")]);
        let err = snaps.ensure(A, &[hostile], &UnpackPolicy::default(), &AtomicBool::new(false)).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path().join("snapshots")).unwrap().count(), 0);
        assert!(matches!(snaps.path("sha256:../../etc"), Err(SnapshotError::Digest(_))));
    }

    #[test]
    fn the_gc_removes_only_snapshots_of_manifests_it_does_not_keep() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = Snapshots::open(&dir.path().join("snapshots")).unwrap();
        for d in [A, B] {
            let l = layer(dir.path(), &[("f", b"x")]);
            snaps.ensure(d, &[l], &UnpackPolicy::default(), &AtomicBool::new(false)).unwrap();
        }
        let keep = HashSet::from([A.to_string()]);
        assert_eq!(snaps.collect(&keep, Duration::from_secs(3600)).unwrap(), 0, "B is within its grace");
        assert_eq!(snaps.collect(&keep, Duration::ZERO).unwrap(), 1);
        assert!(snaps.path(A).unwrap().exists() && !snaps.path(B).unwrap().exists());
    }
}
