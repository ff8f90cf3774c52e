//! A revision's root filesystem as an overlay mount: the image's shared,
//! read-only snapshot ([`crate::artifact::snapshot`]) below, and an upper dir
//! of the revision's own beside its work dir, so what the workload writes
//! stays with its revision and the snapshot is never changed.
//!
//! ```text
//! DATA/content/snapshots/<manifest hex>/        lower (the unpacked image)
//! DATA/deployments/NAME/rev-N.overlay/upper/    the revision's changes
//! DATA/deployments/NAME/rev-N.overlay/work/     overlayfs' own
//! DATA/deployments/NAME/rev-N/rootfs            the mount the plugin sees
//! ```
//!
//! The upper and work dirs are outside the work dir, so no plugin can reach
//! them. The mount is made with the new mount API onto an `O_NOFOLLOW`
//! handle of `rootfs` opened beneath the work dir, and unmounted with
//! `UMOUNT_NOFOLLOW`: a plugin that put a symlink where `rootfs` belongs
//! (it can, while nothing is mounted there) never makes erad mount or
//! unmount anywhere else. The mount is `nodev`, as the work dirs are.
//!
//! Mounts stay across restarts of erad (as containerd's do); after a reboot
//! the next start of the revision mounts again ([`ensure`]).

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags, fsconfig_create, fsconfig_set_string,
    fsmount, fsopen, move_mount,
};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The name of the mount point in a work dir.
pub const ROOTFS: &str = "rootfs";

/// How a new revision gets its image's root filesystem
/// (`[artifacts] rootfs` in erad's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsMode {
    /// An overlay of the image's shared snapshot: nothing unpacked per revision.
    #[default]
    Overlay,
    /// A full unpack into every revision's work dir.
    Copy,
}

/// Why the overlay was not mounted.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// This kernel or the data dir's filesystem cannot hold the overlay
    /// (no overlayfs, an upper dir filesystem it refuses).
    #[error("overlayfs cannot be used here: {0}")]
    Unsupported(io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<rustix::io::Errno> for MountError {
    fn from(e: rustix::io::Errno) -> MountError {
        MountError::Io(e.into())
    }
}

/// overlayfs reads `\` as an escape in its dir options and `:` as a
/// separator of lower dirs.
fn escaped(path: &Path) -> io::Result<String> {
    let text = path.to_str().ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

fn work_dir_fd(work: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(work, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Whether something is mounted on `rootfs` in the work dir (a symlink
/// there is not followed and counts as not mounted).
pub fn is_mounted(work: &Path) -> io::Result<bool> {
    let dir = work_dir_fd(work)?;
    mounted_at(dir.as_fd())
}

fn mounted_at(dir: rustix::fd::BorrowedFd<'_>) -> io::Result<bool> {
    let inner = match rustix::fs::statx(dir, ROOTFS, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID) {
        Ok(s) => s,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let outer = rustix::fs::statx(dir, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    if inner.stx_mask & StatxFlags::MNT_ID.bits() != 0 && outer.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        return Ok(inner.stx_mnt_id != outer.stx_mnt_id);
    }
    Ok((inner.stx_dev_major, inner.stx_dev_minor) != (outer.stx_dev_major, outer.stx_dev_minor))
}

/// Mounts the overlay of `lower` on `<work>/rootfs`, with its upper and work
/// dirs in `layers` (made here; the upper dir takes the snapshot root's
/// owner and mode, which the merged root shows). Does nothing when
/// something is mounted there already.
pub fn mount(lower: &Path, layers: &Path, work: &Path) -> Result<(), MountError> {
    let dir = work_dir_fd(work)?;
    if mounted_at(dir.as_fd())? {
        return Ok(());
    }
    let (upper, scratch) = (layers.join("upper"), layers.join("work"));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&scratch)?;
    if !upper.is_dir() {
        let root = std::fs::metadata(lower)?;
        std::fs::DirBuilder::new().mode(root.mode() & 0o7777).create(&upper)?;
        rustix::fs::chown(&upper, Some(root_uid(&root)), Some(root_gid(&root)))?;
        std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(root.mode() & 0o7777))?;
    }
    match rustix::fs::mkdirat(dir.as_fd(), ROOTFS, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    // Never followed: a symlink here is refused (ELOOP), not mounted through.
    let target = rustix::fs::openat(
        dir.as_fd(),
        ROOTFS,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::other(format!("{}/{ROOTFS} is not a directory erad made: {e}", work.display())))?;
    let escaped = |p: &Path| escaped(p).map_err(MountError::Io);

    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| MountError::Unsupported(e.into()))?;
    for (key, value) in [("lowerdir", lower), ("upperdir", upper.as_path()), ("workdir", scratch.as_path())] {
        // Kernels before 6.5 take overlay's options through the legacy
        // option string, which refuses a ',' in any value (even escaped).
        fsconfig_set_string(fs.as_fd(), key, escaped(value)?).map_err(|e| {
            MountError::Unsupported(io::Error::new(
                io::Error::from(e).kind(),
                format!("{key} {}: {e} (a ',' in the data dir's path needs Linux 6.5)", value.display()),
            ))
        })?;
    }
    // With index=on a second mount of the same upper dir is refused; erad
    // never makes one while the first is mounted (see `mounted_at`).
    fsconfig_set_string(fs.as_fd(), "index", "off")?;
    fsconfig_create(fs.as_fd()).map_err(|e| match e {
        rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP => MountError::Unsupported(overlay_error(e, &fs)),
        e => MountError::Io(overlay_error(e, &fs)),
    })?;
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::MOUNT_ATTR_NODEV)?;
    move_mount(
        mnt.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    Ok(())
}

fn root_uid(m: &std::fs::Metadata) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(m.uid())
}

fn root_gid(m: &std::fs::Metadata) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(m.gid())
}

/// The kernel explains a refused overlay on the fs context's fd.
fn overlay_error(e: rustix::io::Errno, fs: &OwnedFd) -> io::Error {
    let mut why = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = rustix::io::read(fs, &mut buf) {
        if n == 0 {
            break;
        }
        why.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    }
    if why.is_empty() { e.into() } else { io::Error::new(e.kind(), format!("{e}: {}", why.join("; "))) }
}

/// Unmounts `<work>/rootfs` when something is mounted there (lazily:
/// a process still inside keeps its view until it leaves).
pub fn unmount(work: &Path) -> io::Result<()> {
    match is_mounted(work) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    rustix::mount::unmount(work.join(ROOTFS), UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
    Ok(())
}

/// The mount points at or beneath `dir`, from `/proc/self/mountinfo`.
pub fn mounts_beneath(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(Ok(v)) =
                b.get(i + 1..i + 4).map(|o| u8::from_str_radix(std::str::from_utf8(o).unwrap_or("x"), 8))
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_octal(r"/data/a\040b\134c"), r"/data/a b\c");
        assert_eq!(unescape_octal("/plain"), "/plain");
        assert_eq!(unescape_octal(r"/end\04"), r"/end\04");
    }

    #[test]
    fn overlay_options_escape_what_overlayfs_reads_as_syntax() {
        assert_eq!(escaped(Path::new("/a:b,c\\d")).unwrap(), r"/a\:b\,c\\d");
    }
}
