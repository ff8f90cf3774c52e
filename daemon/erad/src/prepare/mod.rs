//! The host side of a revision: its work dir, the deployment's volumes and its
//! port claims. Every path is derived from (deployment, revision, volume) under
//! the data dir, so what Preparing made can always be found and undone, also
//! after a crash.

pub mod rootfs;

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("preparing {what} {path}: {source}")]
pub struct PrepareError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// Makes `dir` (the work dirs) a bind mount of itself with `nodev`, keeping
/// the flags it had. A workload is root in its container and its rootfs is
/// in a work dir: it may `mknod` a node for the host's disk or `/dev/kmsg`
/// there. Its own device rules stop it from opening that node, but nothing
/// would stop the plugin (through WASI) or erad, which run on the host; on a
/// `nodev` mount the kernel refuses to open any device node. Returns
/// whether it mounted (`false` when `dir` is already `nodev`, e.g. after a
/// restart of erad).
pub fn mount_nodev(dir: &Path) -> io::Result<bool> {
    use rustix::fs::StatVfsMountFlags as St;
    use rustix::mount::MountFlags as Ms;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let had = rustix::fs::statvfs(dir)?.f_flag;
    if had.contains(St::NODEV) {
        return Ok(false);
    }
    rustix::mount::mount_bind(dir, dir)?;
    let mut flags = Ms::BIND | Ms::NODEV;
    for (st, ms) in [
        (St::RDONLY, Ms::RDONLY),
        (St::NOSUID, Ms::NOSUID),
        (St::NOEXEC, Ms::NOEXEC),
        (St::NOATIME, Ms::NOATIME),
        (St::NODIRATIME, Ms::NODIRATIME),
    ] {
        if had.contains(st) {
            flags |= ms;
        }
    }
    // Private: the revisions' rootfs mounts beneath it are erad's own and
    // do not propagate to the host's mount of the same directory.
    let made = rustix::mount::mount_remount(dir, flags, "")
        .and_then(|()| rustix::mount::mount_change(dir, rustix::mount::MountPropagationFlags::PRIVATE));
    if let Err(e) = made {
        let _ = rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH);
        return Err(e.into());
    }
    Ok(true)
}

/// Undoes [`mount_nodev`] (lazily: open files stay usable).
pub fn unmount_nodev(dir: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH)?)
}

/// Where erad keeps things under its data dir.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(data_dir: &Path) -> Layout {
        Layout { root: data_dir.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("era.db")
    }

    pub fn content_store(&self) -> PathBuf {
        self.root.join("content")
    }

    pub fn compile_cache(&self) -> PathBuf {
        self.root.join("cache/plugins")
    }

    /// Empty dirs handed to plugin calls that belong to no revision yet.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// Every deployment's work dirs; a `nodev` mount of its own ([`mount_nodev`]).
    pub fn deployments(&self) -> PathBuf {
        self.root.join("deployments")
    }

    pub fn deployment_dir(&self, name: &str) -> PathBuf {
        self.deployments().join(name)
    }

    pub fn work_dir(&self, name: &str, revision: u64) -> PathBuf {
        self.deployment_dir(name).join(format!("rev-{revision}"))
    }

    /// The upper and work dirs of a revision's rootfs overlay
    /// ([`rootfs`]): beside its work dir, out of its plugin's reach.
    pub fn overlay_dir(&self, name: &str, revision: u64) -> PathBuf {
        self.deployment_dir(name).join(format!("rev-{revision}.overlay"))
    }

    pub fn volumes_dir(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    pub fn volume_dir(&self, name: &str, volume: &str) -> PathBuf {
        self.volumes_dir(name).join(volume)
    }

    /// Creates the revision's work dir and the deployment's volumes (kept if
    /// they exist: volumes outlive revisions and stops).
    pub fn prepare(&self, name: &str, revision: u64, volumes: &[String]) -> Result<PathBuf, PrepareError> {
        let work = self.work_dir(name, revision);
        create_private_dir(&work).map_err(|source| PrepareError { what: "work dir", path: work.clone(), source })?;
        for v in volumes {
            let dir = self.volume_dir(name, v);
            create_private_dir(&dir).map_err(|source| PrepareError { what: "volume", path: dir.clone(), source })?;
        }
        Ok(work)
    }

    /// Removes one revision's work dir and its rootfs overlay.
    pub fn remove_revision(&self, name: &str, revision: u64) -> Result<(), PrepareError> {
        let work = self.work_dir(name, revision);
        rootfs::unmount(&work).map_err(|source| PrepareError { what: "rootfs mount", path: work.clone(), source })?;
        remove_dir(&work).map_err(|source| PrepareError { what: "work dir", path: work, source })?;
        let overlay = self.overlay_dir(name, revision);
        remove_dir(&overlay).map_err(|source| PrepareError { what: "rootfs overlay", path: overlay, source })
    }

    /// Removes everything of the deployment on disk: work dirs, their
    /// rootfs mounts and volumes.
    pub fn remove_deployment(&self, name: &str) -> Result<(), PrepareError> {
        let dir = self.deployment_dir(name);
        let mounts = rootfs::mounts_beneath(&dir);
        for work in mounts.iter().filter(|m| m.ends_with(rootfs::ROOTFS)).filter_map(|m| m.parent()) {
            rootfs::unmount(work).map_err(|source| PrepareError {
                what: "rootfs mount",
                path: work.to_path_buf(),
                source,
            })?;
        }
        for (what, dir) in [("deployment dir", dir), ("volumes", self.volumes_dir(name))] {
            remove_dir(&dir).map_err(|source| PrepareError { what, path: dir.clone(), source })?;
        }
        Ok(())
    }
}

/// A throwaway empty dir under `base`, removed when dropped: the `/work` of
/// plugin calls that belong to no revision yet (`info`, `validate`).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(base: &Path) -> io::Result<Scratch> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = base.join(format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        create_private_dir(&path)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Removes a directory tree; one that is already gone is fine.
fn remove_dir(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_survive_a_revision_and_go_with_the_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        let work = l.prepare("web", 1, &["data".into()]).unwrap();
        std::fs::write(l.volume_dir("web", "data").join("keep"), b"x").unwrap();
        l.remove_revision("web", 1).unwrap();
        assert!(!work.exists());
        l.prepare("web", 2, &["data".into()]).unwrap();
        assert!(l.volume_dir("web", "data").join("keep").exists(), "volume kept across revisions");
        l.remove_deployment("web").unwrap();
        l.remove_deployment("web").unwrap();
        assert!(!l.deployment_dir("web").exists() && !l.volumes_dir("web").exists());
    }
}
