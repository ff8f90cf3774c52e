//! Opening paths inside a directory a plugin or a workload can write to (a
//! revision's work dir) without following links out of it.
//!
//! A hostile plugin can put a symlink anywhere in its work dir
//! (`logs/output.log -> /etc/shadow`). Everything erad itself opens there as
//! root goes through these functions, which resolve the path with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! from the directory: a link in any component, or `..` out of it, fails
//! with `ELOOP`/`EXDEV` instead of being followed (Linux 5.6 and later).
//!
//! [`open_at`] does the opening for all of them. Use it directly when you
//! hold a directory open across several operations (log rotation renames
//! within it) or may follow links which stay beneath the directory (`file:`
//! artifact roots, [`Links::StayBeneath`]): it reports the kernel's errno
//! untouched, where the path-based functions put it into words. Where
//! `openat2` is missing (a kernel before 5.6, or a seccomp filter that hides
//! it) it opens each component with `O_NOFOLLOW` instead, which refuses
//! every symlink.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

/// Opens the directory `dir` itself (not following a link at its last component).
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::RDONLY, Mode::empty())?)
}

/// Checks that `rel` is a plain relative path (no `..`, not absolute, not empty).
pub fn relative(rel: &Path) -> io::Result<&Path> {
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a relative path inside the directory", rel.display()),
        ));
    }
    Ok(rel)
}

/// Turns the kernel's answers to a link into words.
fn explain(rel: &Path, e: Errno) -> io::Error {
    match e {
        Errno::LOOP | Errno::XDEV => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is or passes through a symlink; erad does not follow links in a work dir", rel.display()),
        ),
        // A FIFO opened for writing, non-blocking, with no reader.
        Errno::NXIO => io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", rel.display())),
        other => io::Error::from(other),
    }
}

/// [`open_at`] refusing every link, its errors in words naming `shown`.
fn refusing_links(at: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode, shown: &Path) -> io::Result<OwnedFd> {
    open_at(at, rel, flags, mode, Links::Refuse).map_err(|e| match Errno::from_io_error(&e) {
        Some(n) => explain(shown, n),
        None => e,
    })
}

/// Opens `rel` beneath `dir` with `flags` (`O_CLOEXEC` and `O_NOCTTY` added).
pub fn open(dir: &Path, rel: &Path, flags: OFlags, mode: u32) -> io::Result<File> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    let fd = refusing_links(dirfd.as_fd(), rel, flags | OFlags::NOCTTY, Mode::from_raw_mode(mode), rel)?;
    Ok(File::from(fd))
}

/// Opens a regular file beneath `dir` for reading; `None` when it does not
/// exist. Opened non-blocking, so a FIFO put there cannot stall erad; it is
/// refused as not a regular file.
pub fn read_file(dir: &Path, rel: &Path) -> io::Result<Option<File>> {
    match open(dir, rel, OFlags::RDONLY | OFlags::NONBLOCK, 0) {
        Ok(f) => regular(f, rel).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens (creating it 0600 if missing) a regular file beneath `dir` for
/// appending: non-blocking (a FIFO cannot stall erad), and only a file with
/// one link (a hard link could be another name of a file elsewhere).
pub fn append_file(dir: &Path, rel: &Path) -> io::Result<File> {
    let f = open(dir, rel, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NONBLOCK, 0o600)?;
    let f = regular(f, rel)?;
    if std::os::unix::fs::MetadataExt::nlink(&f.metadata()?) != 1 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} has more than one link; erad does not write through hard links", rel.display()),
        ));
    }
    Ok(f)
}

fn regular(f: File, rel: &Path) -> io::Result<File> {
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", rel.display())));
    }
    Ok(f)
}

/// Creates the directories of `rel` beneath `dir` (0700), refusing links.
pub fn create_dirs(dir: &Path, rel: &Path) -> io::Result<()> {
    let rel = relative(rel)?;
    let mut at = open_dir(dir)?;
    let mut walked = std::path::PathBuf::new();
    for c in rel.components() {
        let Component::Normal(name) = c else { continue };
        walked.push(name);
        match rustix::fs::mkdirat(&at, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        at = refusing_links(at.as_fd(), Path::new(name), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty(), &walked)?;
    }
    Ok(())
}

/// Checks that `rel` is a directory beneath `dir` reached through no link.
pub fn check_dir(dir: &Path, rel: &Path) -> io::Result<()> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    refusing_links(dirfd.as_fd(), rel, OFlags::DIRECTORY | OFlags::PATH, Mode::empty(), rel)?;
    Ok(())
}

/// Checks that `rel` (a file or a directory) is beneath `dir` and reached through no link.
pub fn check_path(dir: &Path, rel: &Path) -> io::Result<()> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    // With O_PATH|O_NOFOLLOW a final symlink opens as itself: look at what it is.
    let fd = refusing_links(dirfd.as_fd(), rel, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty(), rel)?;
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == rustix::fs::FileType::Symlink {
        return Err(explain(rel, Errno::LOOP));
    }
    Ok(())
}

/// Reads a regular file beneath `dir`, at most `limit` bytes (more is an error).
pub fn read_capped(dir: &Path, rel: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some(f) = read_file(dir, rel)? else { return Ok(None) };
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} bytes", rel.display()),
        ));
    }
    Ok(Some(buf))
}

/// What a symlink met on the way means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Any symlink, in any component, is refused (`ELOOP`).
    Refuse,
    /// Symlinks are followed while they stay beneath the directory; one that
    /// leads out (absolute, or `..` past the top) is refused (`EXDEV`).
    StayBeneath,
}

/// Attempts at `openat2` when a concurrent rename makes the kernel answer
/// `EAGAIN` (it refuses to guess whether the walk stayed beneath).
const RENAME_RACE_RETRIES: usize = 8;

/// Opens `rel` beneath the open directory `dir` with `flags` (and `mode` if
/// it creates), following links only as `links` says. `rel` must be
/// relative; it may not name `dir` itself. Errors carry the kernel's errno
/// (see [`is_symlink_refusal`], [`is_escape`]).
pub fn open_at(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode, links: Links) -> io::Result<OwnedFd> {
    if rel.is_absolute() || rel.as_os_str().is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a relative path", rel.display())));
    }
    let resolve = match links {
        Links::Refuse => ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        Links::StayBeneath => ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    };
    let flags = flags | OFlags::CLOEXEC;
    let mut attempt = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, mode, resolve) {
            Err(Errno::AGAIN) if attempt < RENAME_RACE_RETRIES => attempt += 1,
            Err(Errno::NOSYS) => return open_by_components(dir, rel, flags, mode),
            other => return Ok(other?),
        }
    }
}

/// The fallback: one `openat` per component, each with `O_NOFOLLOW`, and no
/// `..`. Every symlink is refused, also where [`Links::StayBeneath`] would
/// have followed it.
pub fn open_by_components(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
    let parts: Vec<_> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| match c {
            Component::Normal(p) => Ok(p),
            // `..` could climb out; RESOLVE_BENEATH reports that as EXDEV too.
            _ => Err(io::Error::from(Errno::XDEV)),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, parents)) = parts.split_last() else {
        return Err(io::Error::from(Errno::INVAL));
    };
    let mut held: Option<OwnedFd> = None;
    for p in parents {
        let at = held.as_ref().map_or(dir, |f| f.as_fd());
        let next = rustix::fs::openat(
            at,
            *p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| if is_symlink(at, p) { Errno::LOOP } else { e })?;
        held = Some(next);
    }
    let at = held.as_ref().map_or(dir, |f| f.as_fd());
    Ok(rustix::fs::openat(at, *last, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode)?)
}

fn is_symlink(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// Whether an error from [`open`] means a symlink was refused.
pub fn is_symlink_refusal(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::LOOP.raw_os_error())
}

/// Whether an error from [`open`] means the path led out of the directory.
pub fn is_escape(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::XDEV.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_out_of_the_dir_are_refused_and_the_target_is_untouched() {
        let outside = tempfile::tempdir().unwrap();
        let marker = outside.path().join("marker");
        std::fs::write(&marker, b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        symlink(&marker, dir.path().join("logs/output.log")).unwrap();
        symlink(outside.path(), dir.path().join("out")).unwrap();

        let err = append_file(dir.path(), Path::new("logs/output.log")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(read_file(dir.path(), Path::new("logs/output.log")).is_err());
        assert!(append_file(dir.path(), Path::new("out/new")).is_err());
        assert!(create_dirs(dir.path(), Path::new("out/sub")).is_err());
        assert!(check_dir(dir.path(), Path::new("out")).is_err());
        assert!(check_path(dir.path(), Path::new("out")).is_err(), "a final link is refused too");
        assert!(relative(Path::new("../x")).is_err() && relative(Path::new("/etc")).is_err());
        assert_eq!(std::fs::read(&marker).unwrap(), b"secret");
        assert!(!outside.path().join("new").exists() && !outside.path().join("sub").exists());
    }

    #[test]
    fn fifos_and_hard_links_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Without O_NONBLOCK each of these would wait for a writer or reader forever.
        assert!(read_file(dir.path(), Path::new("fifo")).unwrap_err().to_string().contains("not a regular file"));
        assert!(append_file(dir.path(), Path::new("fifo")).unwrap_err().to_string().contains("not a regular file"));
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        assert!(append_file(dir.path(), Path::new("b")).unwrap_err().to_string().contains("more than one link"));
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"x");
    }

    #[test]
    fn plain_paths_work() {
        let dir = tempfile::tempdir().unwrap();
        create_dirs(dir.path(), Path::new("logs/deep")).unwrap();
        use std::io::Write;
        append_file(dir.path(), Path::new("logs/deep/f")).unwrap().write_all(b"a").unwrap();
        append_file(dir.path(), Path::new("logs/deep/f")).unwrap().write_all(b"b").unwrap();
        assert_eq!(read_capped(dir.path(), Path::new("logs/deep/f"), 2).unwrap().unwrap(), b"ab");
        assert!(read_capped(dir.path(), Path::new("logs/deep/f"), 1).is_err());
        assert!(read_file(dir.path(), Path::new("nope")).unwrap().is_none());
        check_dir(dir.path(), Path::new("logs")).unwrap();
    }

    /// Both implementations, so the fallback is proven where openat2 exists.
    fn both(dir: &Path, rel: &str, links: Links) -> [io::Result<OwnedFd>; 2] {
        let fd = open_dir(dir).unwrap();
        [
            open_at(fd.as_fd(), Path::new(rel), OFlags::RDONLY, Mode::empty(), links),
            open_by_components(fd.as_fd(), Path::new(rel), OFlags::RDONLY, Mode::empty()),
        ]
    }

    #[test]
    fn plain_files_beneath_open_and_links_out_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let marker = outside.path().join("marker");
        std::fs::write(&marker, b"secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        std::fs::write(dir.path().join("logs/ok"), b"fine").unwrap();
        symlink(&marker, dir.path().join("logs/abs")).unwrap();
        symlink(outside.path(), dir.path().join("out")).unwrap();
        symlink("../..", dir.path().join("logs/up")).unwrap();
        for r in both(dir.path(), "logs/ok", Links::Refuse) {
            assert_eq!(io::read_to_string(std::fs::File::from(r.unwrap())).unwrap(), "fine");
        }
        for rel in ["logs/abs", "out/marker", "logs/up/etc/passwd"] {
            for r in both(dir.path(), rel, Links::Refuse) {
                assert!(is_symlink_refusal(&r.unwrap_err()), "{rel}");
            }
            let beneath = open_at(
                open_dir(dir.path()).unwrap().as_fd(),
                Path::new(rel),
                OFlags::RDONLY,
                Mode::empty(),
                Links::StayBeneath,
            );
            assert!(is_escape(&beneath.unwrap_err()), "{rel}");
        }
        for r in both(dir.path(), "logs/../../marker", Links::Refuse) {
            assert!(is_escape(&r.unwrap_err()));
        }
        assert_eq!(std::fs::read(&marker).unwrap(), b"secret");
    }

    #[test]
    fn links_that_stay_beneath_are_followed_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("v1")).unwrap();
        std::fs::write(dir.path().join("v1/app.bin"), b"app").unwrap();
        symlink("v1", dir.path().join("current")).unwrap();
        let fd = open_dir(dir.path()).unwrap();
        let f = open_at(fd.as_fd(), Path::new("current/app.bin"), OFlags::RDONLY, Mode::empty(), Links::StayBeneath);
        assert_eq!(io::read_to_string(std::fs::File::from(f.unwrap())).unwrap(), "app");
        let refused = open_at(fd.as_fd(), Path::new("current/app.bin"), OFlags::RDONLY, Mode::empty(), Links::Refuse);
        assert!(is_symlink_refusal(&refused.unwrap_err()));
    }
}
