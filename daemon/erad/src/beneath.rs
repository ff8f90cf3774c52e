//! Opening paths inside a directory a plugin or a workload can write to (a
//! revision's work dir) without following links out of it.
//!
//! A hostile plugin can put a symlink anywhere in its work dir
//! (`logs/output.log -> /etc/shadow`). Everything erad itself opens there as
//! root goes through these functions, which resolve the path with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! from the directory: a link in any component, or `..` out of it, fails
//! with `ELOOP`/`EXDEV` instead of being followed (Linux 5.6 and later).

use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

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
fn explain(rel: &Path, e: rustix::io::Errno) -> io::Error {
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is or passes through a symlink; erad does not follow links in a work dir", rel.display()),
        ),
        other => io::Error::from(other),
    }
}

/// Opens `rel` beneath `dir` with `flags` (`O_CLOEXEC` and `O_NOCTTY` added).
pub fn open(dir: &Path, rel: &Path, flags: OFlags, mode: u32) -> io::Result<File> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    let fd =
        rustix::fs::openat2(&dirfd, rel, flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::from_raw_mode(mode), RESOLVE)
            .map_err(|e| explain(rel, e))?;
    Ok(File::from(fd))
}

/// Opens a regular file beneath `dir` for reading; `None` when it does not exist.
pub fn read_file(dir: &Path, rel: &Path) -> io::Result<Option<File>> {
    match open(dir, rel, OFlags::RDONLY, 0) {
        Ok(f) => regular(f, rel).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens (creating it 0600 if missing) a regular file beneath `dir` for appending.
pub fn append_file(dir: &Path, rel: &Path) -> io::Result<File> {
    let f = open(dir, rel, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE, 0o600)?;
    regular(f, rel)
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
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        at = rustix::fs::openat2(
            &at,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            RESOLVE,
        )
        .map_err(|e| explain(&walked, e))?;
    }
    Ok(())
}

/// Checks that `rel` is a directory beneath `dir` reached through no link.
pub fn check_dir(dir: &Path, rel: &Path) -> io::Result<()> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    rustix::fs::openat2(&dirfd, rel, OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), RESOLVE)
        .map_err(|e| explain(rel, e))?;
    Ok(())
}

/// Checks that `rel` (a file or a directory) is beneath `dir` and reached through no link.
pub fn check_path(dir: &Path, rel: &Path) -> io::Result<()> {
    let rel = relative(rel)?;
    let dirfd = open_dir(dir)?;
    // With O_PATH|O_NOFOLLOW a final symlink opens as itself: look at what it is.
    let fd =
        rustix::fs::openat2(&dirfd, rel, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty(), RESOLVE)
            .map_err(|e| explain(rel, e))?;
    if rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) == rustix::fs::FileType::Symlink {
        return Err(explain(rel, rustix::io::Errno::LOOP));
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
}
