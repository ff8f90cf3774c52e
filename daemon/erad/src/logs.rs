//! Workload logs. A runtime plugin sends its workload's stdout and stderr to
//! `logs/output.log` in the revision's work dir (the container plugin through
//! the runtime's inherited stdio, the LXC plugin through the console log).
//! erad rotates that file by size, copy-then-truncate as logrotate's
//! `copytruncate` does, since the writer holds it open in append mode: one
//! older generation is kept as `output.log.1`. Both go with the work dir.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The log file, relative to a work dir.
pub const OUTPUT: &str = "logs/output.log";

/// Default size at which `output.log` is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

pub fn current(work_dir: &Path) -> PathBuf {
    work_dir.join(OUTPUT)
}

pub fn rotated(work_dir: &Path) -> PathBuf {
    work_dir.join(format!("{OUTPUT}.1"))
}

/// Rotates when the current file is over `max_bytes`: copies it to
/// `output.log.1` and truncates it. Returns whether it rotated.
pub fn rotate_if_over(work_dir: &Path, max_bytes: u64) -> std::io::Result<bool> {
    let cur = current(work_dir);
    match std::fs::metadata(&cur) {
        Ok(m) if m.len() > max_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let tmp = work_dir.join(format!("{OUTPUT}.1.tmp"));
    std::fs::copy(&cur, &tmp)?;
    std::fs::rename(&tmp, rotated(work_dir))?;
    std::fs::OpenOptions::new().write(true).open(&cur)?.set_len(0)?;
    Ok(true)
}

/// The last `lines` lines (all with `None`) of the rotated and current
/// files together, and the length of the current file they end at.
pub fn tail(work_dir: &Path, lines: Option<usize>) -> std::io::Result<(Vec<u8>, u64)> {
    let read = |p: PathBuf| match std::fs::read(&p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    let old = read(rotated(work_dir))?;
    let cur = read(current(work_dir))?;
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

/// What was appended to the current file since `offset`; if the file is now
/// shorter (rotated), everything from its start. Returns the new offset.
pub fn since(work_dir: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = match std::fs::File::open(current(work_dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let from = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(len - from).read_to_end(&mut buf)?;
    let end = from + buf.len() as u64;
    Ok((buf, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(cur: &str, old: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(current(dir.path()), cur).unwrap();
        if let Some(o) = old {
            std::fs::write(rotated(dir.path()), o).unwrap();
        }
        dir
    }

    #[test]
    fn tail_counts_lines_across_the_rotated_file() {
        let dir = setup("c\nd\n", Some("a\nb\n"));
        assert_eq!(tail(dir.path(), None).unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(tail(dir.path(), Some(3)).unwrap().0, b"b\nc\nd\n");
        assert_eq!(tail(dir.path(), Some(1)).unwrap().0, b"d\n");
        assert_eq!(tail(dir.path(), Some(0)).unwrap().0, b"");
        assert_eq!(tail(dir.path(), Some(10)).unwrap().0, b"a\nb\nc\nd\n");
        assert_eq!(tail(dir.path(), Some(2)).unwrap().1, 4, "ends at the current file's length");
    }

    #[test]
    fn rotation_keeps_one_generation_and_following_restarts_at_the_top() {
        let dir = setup("0123456789\n", None);
        assert!(!rotate_if_over(dir.path(), 100).unwrap());
        let (_, offset) = tail(dir.path(), None).unwrap();
        assert!(rotate_if_over(dir.path(), 5).unwrap());
        assert_eq!(std::fs::read(rotated(dir.path())).unwrap(), b"0123456789\n");
        assert_eq!(std::fs::metadata(current(dir.path())).unwrap().len(), 0);
        // The writer appends after the truncation.
        std::fs::write(current(dir.path()), "new\n").unwrap();
        assert_eq!(since(dir.path(), offset).unwrap(), (b"new\n".to_vec(), 4));
        assert_eq!(since(dir.path(), 4).unwrap(), (Vec::new(), 4));
    }
}
