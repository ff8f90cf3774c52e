//! Where `file:` artifacts may come from: the directories the operator lists
//! in `[artifacts] file_roots`. erad reads as root, and a spec names any
//! path it likes, so a `file:` artifact is read only if its path is beneath
//! one of them, and it is opened from that directory with
//! `openat2(RESOLVE_BENEATH)` ([`crate::beneath`]): a symlink may move
//! within the root, never out of it. Nothing outside is opened, read or
//! hashed. With no roots, `file:` artifacts are off.

use crate::beneath::{self, Links};
use rustix::fs::{FileType, Mode, OFlags};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};

/// The config key every refusal names.
pub const KEY: &str = "artifacts.file_roots";

/// Why a `file:` artifact may not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileRootError {
    #[error("{path}: file: artifacts are off, as {KEY} in erad's config lists no directory")]
    Off { path: PathBuf },
    #[error("{path} is not beneath any directory of {KEY} ({roots})")]
    Outside { path: PathBuf, roots: String },
    #[error("{path} leads out of {root} (listed in {KEY}) through a symlink; refusing to read it")]
    Escapes { path: PathBuf, root: PathBuf },
    #[error(
        "{path} lies under a symlink, and without openat2 on this kernel erad follows no symlink beneath {KEY}; refusing to read it"
    )]
    Symlink { path: PathBuf },
    #[error("{path} is a {kind}, not a regular file; refusing to read it")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// The operator's `file_roots`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileRoots {
    roots: Vec<PathBuf>,
}

/// `path` made absolute (from the current dir) with `.` and `..` resolved by
/// name, without looking at the file system: what "beneath" is judged on.
/// The kernel then resolves the rest beneath the root it picked.
pub fn normalize(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| Path::new("/").join(path));
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl FileRoots {
    pub fn new(roots: &[PathBuf]) -> FileRoots {
        FileRoots { roots: roots.iter().map(|r| normalize(r)).collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The root `path` is beneath, and the path relative to it. By name
    /// only; symlinks are the kernel's business when it is opened.
    pub fn locate(&self, path: &Path) -> Result<(&Path, PathBuf), FileRootError> {
        let path = normalize(path);
        if self.roots.is_empty() {
            return Err(FileRootError::Off { path });
        }
        for root in &self.roots {
            if let Ok(rel) = path.strip_prefix(root)
                && !rel.as_os_str().is_empty()
            {
                return Ok((root, rel.to_path_buf()));
            }
        }
        let roots = self.roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
        Err(FileRootError::Outside { path, roots })
    }

    /// Opens `path` for reading, beneath its root. `O_NONBLOCK` so a FIFO
    /// cannot stall the fetch (it is refused as not a regular file).
    pub fn open(&self, path: &Path) -> Result<std::fs::File, FileRootError> {
        let (root, rel) = self.locate(path)?;
        let path = root.join(&rel);
        let read = |source| FileRootError::Read { path: path.clone(), source };
        // The root itself may be a link the operator made; only what lies
        // beneath it is held to it.
        let dir = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| read(e.into()))?;
        let fd =
            beneath::open_at(dir.as_fd(), &rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty(), Links::StayBeneath)
                .map_err(|e| {
                if beneath::is_escape(&e) {
                    FileRootError::Escapes { path: path.clone(), root: root.to_path_buf() }
                } else if beneath::is_symlink_refusal(&e) {
                    FileRootError::Symlink { path: path.clone() }
                } else {
                    read(e)
                }
            })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| read(e.into()))?;
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => return Ok(std::fs::File::from(fd)),
            FileType::Directory => "directory",
            FileType::Fifo => "FIFO",
            FileType::Socket => "socket",
            FileType::CharacterDevice | FileType::BlockDevice => "device",
            _ => "special file",
        };
        Err(FileRootError::NotRegular { path, kind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_are_judged_by_name_with_dot_dot_resolved() {
        let roots = FileRoots::new(&["/srv/era".into(), "/opt/art/".into()]);
        assert_eq!(roots.locate(Path::new("/srv/era/a/b.bin")).unwrap(), (Path::new("/srv/era"), "a/b.bin".into()));
        assert_eq!(roots.locate(Path::new("/opt/art/./x")).unwrap().1, PathBuf::from("x"));
        for outside in ["/srv/era/../../etc/shadow", "/srv/era-other/x", "/srv/era", "/etc/shadow"] {
            let err = roots.locate(Path::new(outside)).unwrap_err();
            assert!(matches!(err, FileRootError::Outside { .. }), "{outside}: {err}");
        }
        let err = roots.locate(Path::new("/etc/shadow")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/shadow is not beneath any directory of artifacts.file_roots (/srv/era, /opt/art)"
        );
        let err = FileRoots::default().locate(Path::new("/srv/era/x")).unwrap_err();
        assert!(err.to_string().contains("file: artifacts are off, as artifacts.file_roots"), "{err}");
    }

    #[test]
    fn links_may_move_within_a_root_but_not_out_of_it() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("marker"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("v1")).unwrap();
        std::fs::write(root.path().join("v1/app.bin"), b"app").unwrap();
        symlink("v1/app.bin", root.path().join("current.bin")).unwrap();
        symlink(outside.path().join("marker"), root.path().join("abs.bin")).unwrap();
        symlink("../../../../../../../..", root.path().join("up")).unwrap();
        let roots = FileRoots::new(&[root.path().to_path_buf()]);
        let mut got = String::new();
        roots.open(&root.path().join("current.bin")).unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "app");
        for name in ["abs.bin", "up/etc/passwd"] {
            let err = roots.open(&root.path().join(name)).unwrap_err();
            assert!(matches!(err, FileRootError::Escapes { .. }), "{name}: {err}");
            assert!(err.to_string().contains("artifacts.file_roots"), "{err}");
        }
        let err = roots.open(&root.path().join("v1")).unwrap_err();
        assert!(err.to_string().contains("is a directory, not a regular file"), "{err}");
        let err = roots.open(&outside.path().join("marker")).unwrap_err();
        assert!(matches!(err, FileRootError::Outside { .. }), "{err}");
    }
}
