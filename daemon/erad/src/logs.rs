//! Workload logs. A runtime plugin sends its workload's stdout and stderr to
//! `logs/output.log` in the revision's work dir (the container plugin through
//! the runtime's inherited stdio, the LXC plugin through the console log).
//! erad rotates that file by size, copy-then-truncate as logrotate's
//! `copytruncate` does, since the writer holds it open in append mode: one
//! older generation is kept as `output.log.1`. Both go with the work dir.
//!
//! The work dir is written by plugins and the programs they run as root, so
//! erad trusts nothing in it: every file is opened beneath the work dir with
//! no symlink followed in any component ([`crate::beneath`]), must be a
//! regular file with one link, and rotation truncates the descriptor it
//! checked and writes `output.log.1` through a fresh `O_EXCL` file that it
//! renames into place. A link planted there is refused, never read through,
//! written through or truncated.

use crate::beneath::{self, Links};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The log directory, relative to a work dir.
pub const DIR: &str = "logs";
/// The log file, relative to a work dir.
pub const OUTPUT: &str = "logs/output.log";

const CURRENT: &str = "output.log";
const ROTATED: &str = "output.log.1";
/// Where rotation writes the copy before renaming it to [`ROTATED`].
const ROTATING: &str = "output.log.1.tmp";

/// Default size at which `output.log` is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

/// Why a log could not be read or rotated; names the file (relative to the
/// work dir; empty for the work dir itself) and the revision.
#[derive(Debug, thiserror::Error)]
pub struct LogError {
    pub file: String,
    pub deployment: String,
    pub revision: u64,
    pub problem: LogProblem,
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (file, d, r, p) = (&self.file, &self.deployment, self.revision, &self.problem);
        match file.as_str() {
            "" => write!(f, "the work dir of {d} revision {r}{p}"),
            _ => write!(f, "{file} in the work dir of {d} revision {r}{p}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogProblem {
    #[error(" is a symlink; refusing to follow it")]
    Symlink,
    #[error(" leads out of the work dir; refusing to follow it")]
    Escape,
    #[error(" is a {0}, not a regular file; refusing to read it")]
    NotRegular(&'static str),
    #[error(" has {0} hard links; refusing to read or rotate it")]
    HardLinked(u64),
    #[error(": {0}")]
    Io(#[from] std::io::Error),
}

/// The logs of one revision's work dir.
#[derive(Debug, Clone)]
pub struct WorkLog {
    work_dir: PathBuf,
    deployment: String,
    revision: u64,
}

impl WorkLog {
    pub fn new(work_dir: &Path, deployment: &str, revision: u64) -> WorkLog {
        WorkLog { work_dir: work_dir.to_path_buf(), deployment: deployment.to_string(), revision }
    }

    fn error(&self, file: &str, problem: impl Into<LogProblem>) -> LogError {
        LogError {
            file: file.to_string(),
            deployment: self.deployment.clone(),
            revision: self.revision,
            problem: problem.into(),
        }
    }

    /// The `logs` dir, opened beneath the work dir; `None` if either is missing.
    fn dir(&self) -> Result<Option<OwnedFd>, LogError> {
        let Some(work) = self.opened("", beneath::open_dir(&self.work_dir))? else { return Ok(None) };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        self.opened(DIR, beneath::open_at(work.as_fd(), Path::new(DIR), flags, Mode::empty(), Links::Refuse))
    }

    /// Opens `name` in the logs dir and checks it is a regular file with one
    /// link; `None` if it does not exist. `O_NONBLOCK` so a FIFO planted
    /// there cannot stall erad (it is then refused as not a regular file).
    fn open(&self, dir: BorrowedFd<'_>, name: &str, flags: OFlags) -> Result<Option<std::fs::File>, LogError> {
        let file = format!("{DIR}/{name}");
        let opened = beneath::open_at(dir, Path::new(name), flags | OFlags::NONBLOCK, Mode::empty(), Links::Refuse);
        let Some(fd) = self.opened(&file, opened)? else { return Ok(None) };
        let st = rustix::fs::fstat(&fd).map_err(|e| self.error(&file, std::io::Error::from(e)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            other => return Err(self.error(&file, LogProblem::NotRegular(file_type_name(other)))),
        }
        if st.st_nlink != 1 {
            return Err(self.error(&file, LogProblem::HardLinked(st.st_nlink)));
        }
        Ok(Some(std::fs::File::from(fd)))
    }

    fn opened(&self, file: &str, r: std::io::Result<OwnedFd>) -> Result<Option<OwnedFd>, LogError> {
        match r {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if beneath::is_symlink_refusal(&e) => Err(self.error(file, LogProblem::Symlink)),
            Err(e) if beneath::is_escape(&e) => Err(self.error(file, LogProblem::Escape)),
            Err(e) => Err(self.error(file, e)),
        }
    }

    /// Rotates when the current file is over `max_bytes`: copies it to
    /// `output.log.1` and truncates it. Returns whether it rotated.
    pub fn rotate_if_over(&self, max_bytes: u64) -> Result<bool, LogError> {
        let Some(dir) = self.dir()? else { return Ok(false) };
        let Some(mut cur) = self.open(dir.as_fd(), CURRENT, OFlags::RDWR)? else { return Ok(false) };
        let io = |e: std::io::Error| self.error(OUTPUT, e);
        let meta = cur.metadata().map_err(io)?;
        if meta.len() <= max_bytes {
            return Ok(false);
        }
        let tmp_name = format!("{DIR}/{ROTATING}");
        let tmp_err = |e: std::io::Error| self.error(&tmp_name, e);
        // A copy a crash left behind: unlinking removes the name, never what
        // a link there points to.
        match rustix::fs::unlinkat(&dir, ROTATING, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(tmp_err(e.into())),
        }
        let mode = Mode::from_raw_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL;
        let tmp = beneath::open_at(dir.as_fd(), Path::new(ROTATING), flags, mode, Links::Refuse).map_err(tmp_err)?;
        let mut tmp = std::fs::File::from(tmp);
        cur.seek(SeekFrom::Start(0)).map_err(io)?;
        std::io::copy(&mut cur, &mut tmp).map_err(tmp_err)?;
        tmp.sync_all().map_err(tmp_err)?;
        // The rename replaces whatever `output.log.1` was, link included.
        rustix::fs::renameat(&dir, ROTATING, &dir, ROTATED).map_err(|e| tmp_err(e.into()))?;
        // Truncate the file that was checked, by its descriptor.
        cur.set_len(0).map_err(io)?;
        Ok(true)
    }

    /// The last `lines` lines (all with `None`) of the rotated and current
    /// files together, and the length of the current file they end at.
    pub fn tail(&self, lines: Option<usize>) -> Result<(Vec<u8>, u64), LogError> {
        let Some(dir) = self.dir()? else { return Ok((Vec::new(), 0)) };
        let read = |name: &str| -> Result<Vec<u8>, LogError> {
            let mut buf = Vec::new();
            if let Some(mut f) = self.open(dir.as_fd(), name, OFlags::RDONLY)? {
                f.read_to_end(&mut buf).map_err(|e| self.error(&format!("{DIR}/{name}"), e))?;
            }
            Ok(buf)
        };
        let old = read(ROTATED)?;
        let cur = read(CURRENT)?;
        let end = cur.len() as u64;
        let mut all = old;
        all.extend_from_slice(&cur);
        let Some(n) = lines else { return Ok((all, end)) };
        // Start after the n-th newline from the end, not counting a final one.
        let body = all.strip_suffix(b"\n").unwrap_or(&all);
        let from = match n {
            0 => all.len(),
            _ => body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').nth(n - 1).map_or(0, |(i, _)| i + 1),
        };
        Ok((all[from..].to_vec(), end))
    }

    /// What was appended to the current file since `offset`; if the file is
    /// now shorter (rotated), everything from its start. Returns the new offset.
    pub fn since(&self, offset: u64) -> Result<(Vec<u8>, u64), LogError> {
        let Some(dir) = self.dir()? else { return Ok((Vec::new(), 0)) };
        let Some(mut f) = self.open(dir.as_fd(), CURRENT, OFlags::RDONLY)? else { return Ok((Vec::new(), 0)) };
        let io = |e: std::io::Error| self.error(OUTPUT, e);
        let len = f.metadata().map_err(io)?.len();
        let from = if len < offset { 0 } else { offset };
        f.seek(SeekFrom::Start(from)).map_err(io)?;
        let mut buf = Vec::new();
        f.take(len - from).read_to_end(&mut buf).map_err(io)?;
        let end = from + buf.len() as u64;
        Ok((buf, end))
    }
}

fn file_type_name(t: FileType) -> &'static str {
    match t {
        FileType::Directory => "directory",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Symlink => "symlink",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn current(dir: &Path) -> PathBuf {
        dir.join(OUTPUT)
    }

    fn rotated(dir: &Path) -> PathBuf {
        dir.join(DIR).join(ROTATED)
    }

    fn setup(cur: &str, old: Option<&str>) -> (tempfile::TempDir, WorkLog) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(DIR)).unwrap();
        std::fs::write(current(dir.path()), cur).unwrap();
        if let Some(o) = old {
            std::fs::write(rotated(dir.path()), o).unwrap();
        }
        let log = WorkLog::new(dir.path(), "web", 3);
        (dir, log)
    }

    /// A file outside the work dir that no log operation may read or change.
    fn marker() -> (tempfile::TempDir, PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let marker = outside.path().join("marker");
        std::fs::write(&marker, "root's secret\n".repeat(100)).unwrap();
        (outside, marker)
    }

    #[test]
    fn tail_counts_lines_across_the_rotated_file() {
        let (_d, log) = setup("c\nd\n", Some("a\nb\n"));
        assert_eq!(log.tail(None).unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(log.tail(Some(3)).unwrap().0, b"b\nc\nd\n");
        assert_eq!(log.tail(Some(1)).unwrap().0, b"d\n");
        assert_eq!(log.tail(Some(0)).unwrap().0, b"");
        assert_eq!(log.tail(Some(10)).unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(log.tail(Some(2)).unwrap().1, 4, "ends at the current file's length");
    }

    #[test]
    fn rotation_keeps_one_generation_and_following_restarts_at_the_top() {
        let (dir, log) = setup("0123456789\n", None);
        assert!(!log.rotate_if_over(100).unwrap());
        let (_, offset) = log.tail(None).unwrap();
        assert!(log.rotate_if_over(5).unwrap());
        assert_eq!(std::fs::read(rotated(dir.path())).unwrap(), b"0123456789\n");
        assert_eq!(std::fs::metadata(current(dir.path())).unwrap().len(), 0);
        assert!(!dir.path().join(DIR).join(ROTATING).exists());
        // The writer appends after the truncation.
        std::fs::write(current(dir.path()), "new\n").unwrap();
        assert_eq!(log.since(offset).unwrap(), (b"new\n".to_vec(), 4));
        assert_eq!(log.since(4).unwrap(), (Vec::new(), 4));
    }

    #[test]
    fn a_missing_work_dir_or_log_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let log = WorkLog::new(&dir.path().join("gone"), "web", 1);
        assert_eq!(log.tail(None).unwrap(), (Vec::new(), 0));
        assert!(!log.rotate_if_over(0).unwrap());
        let log = WorkLog::new(dir.path(), "web", 1);
        assert_eq!(log.since(0).unwrap(), (Vec::new(), 0));
    }

    #[test]
    fn a_log_linked_out_of_the_work_dir_is_neither_read_nor_truncated() {
        let (_outside, marker) = marker();
        let before = std::fs::read(&marker).unwrap();
        let (dir, log) = setup("", None);
        std::fs::remove_file(current(dir.path())).unwrap();
        symlink(&marker, current(dir.path())).unwrap();
        let err = log.tail(None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "logs/output.log in the work dir of web revision 3 is a symlink; refusing to follow it"
        );
        assert!(matches!(log.since(0).unwrap_err().problem, LogProblem::Symlink));
        assert!(matches!(log.rotate_if_over(1).unwrap_err().problem, LogProblem::Symlink));
        assert_eq!(std::fs::read(&marker).unwrap(), before, "the marker is unchanged");
    }

    #[test]
    fn a_logs_dir_linked_out_of_the_work_dir_is_refused() {
        let (outside, marker) = marker();
        let before = std::fs::read(&marker).unwrap();
        std::fs::rename(&marker, outside.path().join(CURRENT)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join(DIR)).unwrap();
        let log = WorkLog::new(dir.path(), "web", 3);
        let err = log.tail(None).unwrap_err();
        assert_eq!(err.to_string(), "logs in the work dir of web revision 3 is a symlink; refusing to follow it");
        assert!(log.rotate_if_over(1).is_err());
        assert_eq!(std::fs::read(outside.path().join(CURRENT)).unwrap(), before);
        assert!(!outside.path().join(ROTATED).exists(), "nothing written out there");
    }

    #[test]
    fn rotation_never_writes_through_a_planted_rotated_link() {
        let (_outside, marker) = marker();
        let before = std::fs::read(&marker).unwrap();
        let (dir, log) = setup("0123456789\n", None);
        symlink(&marker, rotated(dir.path())).unwrap();
        symlink(&marker, dir.path().join(DIR).join(ROTATING)).unwrap();
        assert!(log.rotate_if_over(5).unwrap());
        assert_eq!(std::fs::read(&marker).unwrap(), before, "the marker is unchanged");
        let meta = std::fs::symlink_metadata(rotated(dir.path())).unwrap();
        assert!(meta.is_file(), "output.log.1 is now a file of its own");
        assert_eq!(std::fs::read(rotated(dir.path())).unwrap(), b"0123456789\n");
        // And a rotated file that is a link is refused when read.
        std::fs::remove_file(rotated(dir.path())).unwrap();
        symlink(&marker, rotated(dir.path())).unwrap();
        let err = log.tail(None).unwrap_err();
        assert!(
            err.to_string().starts_with("logs/output.log.1 in the work dir of web revision 3 is a symlink"),
            "{err}"
        );
    }

    #[test]
    fn hard_links_and_fifos_are_refused() {
        let (outside, _) = marker();
        let (dir, log) = setup("", None);
        // A hard link to a file elsewhere (same file system: the temp dir).
        let other = outside.path().join("other");
        std::fs::write(&other, b"elsewhere").unwrap();
        std::fs::remove_file(current(dir.path())).unwrap();
        std::fs::hard_link(&other, current(dir.path())).unwrap();
        assert!(matches!(log.rotate_if_over(0).unwrap_err().problem, LogProblem::HardLinked(2)));
        assert!(matches!(log.tail(None).unwrap_err().problem, LogProblem::HardLinked(2)));
        assert_eq!(std::fs::read(&other).unwrap(), b"elsewhere");
        std::fs::remove_file(current(dir.path())).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, current(dir.path()), FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .unwrap();
        let err = log.tail(None).unwrap_err();
        assert!(err.to_string().contains("is a FIFO, not a regular file"), "{err}");
    }
}
