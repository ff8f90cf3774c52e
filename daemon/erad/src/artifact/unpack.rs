//! Safe unpacking of image layers into a root filesystem.
//!
//! A layer is hostile until proven otherwise. Every entry's path is checked
//! before anything is written: no absolute paths, no `..`, no parent
//! directory that is a symlink (so a write can never be redirected outside
//! the root), symlink and hard-link targets that stay inside the root,
//! device nodes and setuid/setgid bits only when the policy allows them, and
//! limits on total size and entry count against decompression bombs. Files
//! are created with `O_NOFOLLOW | O_EXCL` after removing whatever was there.
//! OCI whiteouts (`.wh.NAME`) and opaque whiteouts (`.wh..wh..opq`) remove
//! what lower layers put there.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// What an unpack may do beyond plain files, directories and links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackPolicy {
    pub allow_devices: bool,
    pub allow_setuid: bool,
    /// Total bytes of file content across all layers.
    pub max_bytes: u64,
    /// Total entries across all layers.
    pub max_entries: u64,
}

impl Default for UnpackPolicy {
    fn default() -> Self {
        UnpackPolicy { allow_devices: false, allow_setuid: false, max_bytes: 16 << 30, max_entries: 1_000_000 }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: entry {entry:?}: {reason}")]
    Hostile { layer: String, entry: String, reason: String },
    #[error("layer {layer}: {what} exceeds the limit of {limit}")]
    Limit { layer: String, what: &'static str, limit: u64 },
    #[error("layer {layer}: media type {media_type:?} is not a tar layer erad can unpack")]
    MediaType { layer: String, media_type: String },
    #[error("layer {layer}: {path}: {source}")]
    Io { layer: String, path: PathBuf, source: io::Error },
    #[error("the unpack was cancelled")]
    Cancelled,
}

/// One layer: its media type and its verified blob.
#[derive(Debug, Clone)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub path: PathBuf,
}

fn decoder(layer: &Layer) -> Result<Box<dyn Read>, UnpackError> {
    let io_err = |source| UnpackError::Io { layer: layer.digest.clone(), path: layer.path.clone(), source };
    let file = io::BufReader::new(fs::File::open(&layer.path).map_err(io_err)?);
    let mt = layer.media_type.as_str();
    if mt.ends_with("tar+gzip") || mt.ends_with("tar.gzip") || mt.ends_with(".tar.gz") {
        Ok(Box::new(flate2::read::GzDecoder::new(file)))
    } else if mt.ends_with("tar+zstd") {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(io_err)?))
    } else if mt.ends_with(".tar") || mt.ends_with("layer.v1.tar") {
        Ok(Box::new(file))
    } else {
        Err(UnpackError::MediaType { layer: layer.digest.clone(), media_type: mt.to_string() })
    }
}

/// The archive path as normal components, or why it is refused.
fn clean_path(raw: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "path is not UTF-8".to_string())?;
    if text.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut parts = Vec::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::RootDir | Component::Prefix(_) => return Err("absolute path".into()),
        }
    }
    Ok(parts)
}

/// Makes sure every parent of `parts` under `root` is a real directory (not
/// a symlink), creating missing ones. Returns the full path.
fn safe_parent(root: &Path, parts: &[String]) -> Result<PathBuf, String> {
    let mut at = root.to_path_buf();
    for p in &parts[..parts.len().saturating_sub(1)] {
        at.push(p);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Err(format!("parent {p:?} is a symlink")),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("parent {p:?} is not a directory")),
            Err(_) => fs::create_dir(&at).map_err(|e| format!("cannot create {p:?}: {e}"))?,
        }
    }
    Ok(root.join(parts.join("/")))
}

/// Whether a link target, taken from the link's directory (or the root for
/// absolute targets), stays inside the root.
fn stays_inside(link_parts: &[String], target: &str) -> bool {
    let mut stack: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link_parts[..link_parts.len() - 1].iter().map(String::as_str).collect()
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            other => stack.push(other),
        }
    }
    true
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn mode_bits(mode: u32, policy: &UnpackPolicy) -> u32 {
    if policy.allow_setuid { mode & 0o7777 } else { mode & 0o1777 }
}

/// Unpacks `layers`, lowest first, into `root` (created if missing).
pub fn unpack_layers(layers: &[Layer], root: &Path, policy: &UnpackPolicy) -> Result<UnpackStats, UnpackError> {
    unpack_layers_until(layers, root, policy, &AtomicBool::new(false))
}

/// [`unpack_layers`], which gives up with [`UnpackError::Cancelled`] at the
/// next entry once `cancel` turns true.
pub fn unpack_layers_until(
    layers: &[Layer],
    root: &Path,
    policy: &UnpackPolicy,
    cancel: &AtomicBool,
) -> Result<UnpackStats, UnpackError> {
    fs::create_dir_all(root).map_err(|source| UnpackError::Io { layer: String::new(), path: root.into(), source })?;
    let mut stats = UnpackStats::default();
    for layer in layers {
        unpack_one(layer, root, policy, &mut stats, cancel)?;
    }
    Ok(stats)
}

fn unpack_one(
    layer: &Layer,
    root: &Path,
    policy: &UnpackPolicy,
    stats: &mut UnpackStats,
    cancel: &AtomicBool,
) -> Result<(), UnpackError> {
    let id = layer.digest.clone();
    let io_err = |path: &Path, source| UnpackError::Io { layer: id.clone(), path: path.into(), source };
    let mut archive = tar::Archive::new(super::targuard::TarGuard::new(decoder(layer)?));
    let entries = archive.entries().map_err(|e| io_err(&layer.path, e))?;
    // What this layer made: its whiteouts hide only what lower layers made
    // (the OCI image spec), whatever order its entries come in.
    let mut made = std::collections::HashSet::new();
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        let mut entry = entry.map_err(|e| io_err(&layer.path, e))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let hostile = |reason: String| UnpackError::Hostile { layer: id.clone(), entry: name.clone(), reason };
        stats.entries += 1;
        if stats.entries > policy.max_entries {
            return Err(UnpackError::Limit { layer: id.clone(), what: "the entry count", limit: policy.max_entries });
        }
        let parts = clean_path(&raw).map_err(hostile)?;
        let Some(file_name) = parts.last().cloned() else { continue };
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = mode_bits(header.mode().unwrap_or(0o644), policy);
        if !policy.allow_setuid && header.mode().unwrap_or(0) & 0o6000 != 0 {
            tracing::debug!(layer = id, entry = name, "setuid/setgid bits stripped");
        }

        // Whiteouts remove what lower layers made; they are not files.
        if let Some(hidden) = file_name.strip_prefix(".wh.") {
            let parent = safe_parent(root, &parts).map_err(hostile)?;
            let dir = parent.parent().unwrap_or(root).to_path_buf();
            if hidden == ".wh..opq" {
                for child in fs::read_dir(&dir).map_err(|e| io_err(&dir, e))?.flatten() {
                    if !made.contains(&child.path()) {
                        remove_any(&child.path()).map_err(|e| io_err(&child.path(), e))?;
                    }
                }
            } else {
                // `.wh...` would hide `..`: the directory above the root.
                if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                    return Err(hostile("malformed whiteout".into()));
                }
                let target = dir.join(hidden);
                if !made.contains(&target) {
                    remove_any(&target).map_err(|e| io_err(&target, e))?;
                }
            }
            continue;
        }

        let target = safe_parent(root, &parts).map_err(hostile)?;
        made.insert(target.clone());
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target).map_err(|e| io_err(&target, e))?;
                        fs::create_dir(&target).map_err(|e| io_err(&target, e))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(|e| io_err(&target, e))?,
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The size the archive reads the data by (a PAX size wins
                // over the header's), and no sum that can wrap.
                let size = entry.size();
                if stats.bytes.checked_add(size).is_none_or(|total| total > policy.max_bytes) {
                    return Err(UnpackError::Limit {
                        layer: id.clone(),
                        what: "the unpacked size",
                        limit: policy.max_bytes,
                    });
                }
                remove_any(&target).map_err(|e| io_err(&target, e))?;
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .mode(mode)
                    .open(&target)
                    .map_err(|e| io_err(&target, e))?;
                // Never trust the header's size for the limit alone: count
                // what is actually written.
                let written = io::copy(&mut (&mut entry).take(size), &mut out).map_err(|e| io_err(&target, e))?;
                stats.bytes += written;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Symlink => {
                let link =
                    header.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                if link.is_empty() || !stays_inside(&parts, &link) {
                    return Err(hostile(format!("symlink target {link:?} leaves the root")));
                }
                remove_any(&target).map_err(|e| io_err(&target, e))?;
                std::os::unix::fs::symlink(&link, &target).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Link => {
                let link = header.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let link_parts = clean_path(&link).map_err(|r| hostile(format!("hard link target: {r}")))?;
                if link_parts.is_empty() {
                    return Err(hostile("hard link to the root".into()));
                }
                let source = safe_parent(root, &link_parts).map_err(|r| hostile(format!("hard link target: {r}")))?;
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(hostile(format!(
                            "hard link target {:?} is not a regular file in the root",
                            String::from_utf8_lossy(&link)
                        )));
                    }
                }
                remove_any(&target).map_err(|e| io_err(&target, e))?;
                fs::hard_link(&source, &target).map_err(|e| io_err(&target, e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                if !policy.allow_devices {
                    return Err(hostile("device nodes and fifos are not allowed by the unpack policy".into()));
                }
                let file_type = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                remove_any(&target).map_err(|e| io_err(&target, e))?;
                rustix::fs::mknodat(rustix::fs::CWD, &target, file_type, rustix::fs::Mode::from_raw_mode(mode), dev)
                    .map_err(|e| io_err(&target, e.into()))?;
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => return Err(hostile(format!("entry type {other:?} is not supported"))),
        }
        if rustix::process::geteuid().is_root()
            && let (Ok(uid), Ok(gid)) = (header.uid(), header.gid())
        {
            let _ = std::os::unix::fs::lchown(&target, Some(uid as u32), Some(gid as u32));
            // A chown clears the setuid and setgid bits: set them after it.
            if mode & 0o6000 != 0
                && matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory)
            {
                fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(|e| io_err(&target, e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with raw headers, so hostile names can be written as-is.
    struct Tar(Vec<u8>);

    impl Tar {
        fn new() -> Tar {
            Tar(Vec::new())
        }

        fn entry(mut self, name: &str, kind: tar::EntryType, mode: u32, link: &str, body: &[u8]) -> Tar {
            let mut h = tar::Header::new_gnu();
            {
                let raw = h.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(body.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(body);
            self.0.resize(self.0.len().div_ceil(512) * 512, 0);
            self
        }

        fn file(self, name: &str, body: &str) -> Tar {
            self.entry(name, tar::EntryType::Regular, 0o644, "", body.as_bytes())
        }

        fn write_zstd(mut self, dir: &Path, name: &str) -> Layer {
            self.0.extend_from_slice(&[0u8; 1024]);
            let path = dir.join(name);
            fs::write(&path, zstd::encode_all(&self.0[..], 3).unwrap()).unwrap();
            Layer {
                digest: format!("sha256:{name}"),
                media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
                path,
            }
        }

        fn write(mut self, dir: &Path, name: &str, gzip: bool) -> Layer {
            self.0.extend_from_slice(&[0u8; 1024]);
            let path = dir.join(name);
            if gzip {
                let mut enc =
                    flate2::write::GzEncoder::new(fs::File::create(&path).unwrap(), flate2::Compression::fast());
                io::Write::write_all(&mut enc, &self.0).unwrap();
                enc.finish().unwrap();
            } else {
                fs::write(&path, &self.0).unwrap();
            }
            let media_type = if gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip"
            } else {
                "application/vnd.oci.image.layer.v1.tar"
            };
            Layer { digest: format!("sha256:{name}"), media_type: media_type.into(), path }
        }
    }

    /// A temp dir with `root/` to unpack into and a `sentinel` beside it.
    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let sentinel = dir.path().join("sentinel");
        fs::write(&sentinel, b"untouched").unwrap();
        (dir, root, sentinel)
    }

    #[test]
    fn layers_stack_with_whiteouts_links_and_gzip() {
        let (dir, root, _) = setup();
        let l1 = Tar::new()
            .entry("etc/", tar::EntryType::Directory, 0o755, "", b"")
            .file("etc/a.conf", "a")
            .file("etc/b.conf", "b")
            .entry("cache/", tar::EntryType::Directory, 0o755, "", b"")
            .file("cache/old", "old")
            .entry("bin/sh", tar::EntryType::Regular, 0o4755, "", b"#!")
            .entry("bin/bash", tar::EntryType::Link, 0o755, "bin/sh", b"")
            .entry("usr/bin/env", tar::EntryType::Symlink, 0o777, "/bin/sh", b"")
            .write(dir.path(), "l1", true);
        let l2 = Tar::new().file("etc/.wh.a.conf", "").file("cache/.wh..wh..opq", "").file("cache/new", "new").write(
            dir.path(),
            "l2",
            false,
        );
        let l3 = Tar::new().file("etc/zstd.conf", "z").write_zstd(dir.path(), "l3");
        let stats = unpack_layers(&[l1, l2, l3], &root, &UnpackPolicy::default()).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/zstd.conf")).unwrap(), "z");
        assert!(stats.entries >= 10 && stats.bytes > 0);
        assert!(!root.join("etc/a.conf").exists(), "whiteout removed it");
        assert_eq!(fs::read_to_string(root.join("etc/b.conf")).unwrap(), "b");
        assert!(!root.join("cache/old").exists() && root.join("cache/new").exists(), "opaque whiteout");
        assert_eq!(fs::metadata(root.join("bin/sh")).unwrap().permissions().mode() & 0o7777, 0o755, "setuid stripped");
        // A whiteout hides only what lower layers made, not what its own
        // layer made before it.
        let l5 = Tar::new()
            .file("etc/b.conf", "b2")
            .file("etc/.wh.b.conf", "")
            .file("cache/keep", "k")
            .file("cache/.wh..wh..opq", "")
            .write(dir.path(), "l5", false);
        unpack_layers(&[l5], &root, &UnpackPolicy::default()).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/b.conf")).unwrap(), "b2");
        assert!(root.join("cache/keep").exists() && !root.join("cache/new").exists(), "opaque: the lower layer's only");
        // Allowed, the bit survives the chown (as root) that follows it.
        let kept = dir.path().join("kept");
        fs::create_dir(&kept).unwrap();
        let l4 = Tar::new().entry("bin/su", tar::EntryType::Regular, 0o4755, "", b"#!").write(dir.path(), "l4", false);
        unpack_layers(&[l4], &kept, &UnpackPolicy { allow_setuid: true, ..UnpackPolicy::default() }).unwrap();
        assert_eq!(fs::metadata(kept.join("bin/su")).unwrap().permissions().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(fs::read_link(root.join("usr/bin/env")).unwrap(), Path::new("/bin/sh"));
        assert_eq!(fs::read(root.join("bin/bash")).unwrap(), b"#!");
        assert!(!root.join("etc/.wh.a.conf").exists());
    }

    #[test]
    fn hostile_entries_are_refused_by_name_and_nothing_outside_the_root_changes() {
        type Build = Box<dyn Fn(Tar) -> Tar>;
        let cases: Vec<(&str, Build, &str)> = vec![
            ("traversal", Box::new(|t: Tar| t.file("../sentinel", "pwned")), "path contains '..'"),
            ("absolute", Box::new(|t: Tar| t.file("/tmp/era-unpack-absolute", "pwned")), "absolute path"),
            (
                "symlinked parent",
                Box::new(|t: Tar| {
                    t.entry("up", tar::EntryType::Symlink, 0o777, "..", b"").file("up/sentinel", "pwned")
                }),
                "symlink target \"..\" leaves the root",
            ),
            (
                "symlink escaping",
                Box::new(|t: Tar| t.entry("etc/passwd", tar::EntryType::Symlink, 0o777, "../../sentinel", b"")),
                "leaves the root",
            ),
            (
                "hard link outside",
                Box::new(|t: Tar| t.entry("x", tar::EntryType::Link, 0o644, "../sentinel", b"")),
                "hard link target: path contains '..'",
            ),
            ("device", Box::new(|t: Tar| t.entry("dev/sda", tar::EntryType::Block, 0o600, "", b"")), "device nodes"),
        ];
        for (what, build, expected) in cases {
            let (dir, root, sentinel) = setup();
            let layer = build(Tar::new()).write(dir.path(), "hostile", true);
            let err = unpack_layers(&[layer], &root, &UnpackPolicy::default()).unwrap_err();
            assert!(matches!(err, UnpackError::Hostile { .. }), "{what}: {err}");
            assert!(err.to_string().contains(expected), "{what}: {err}");
            assert_eq!(fs::read(&sentinel).unwrap(), b"untouched", "{what}");
            assert!(!Path::new("/tmp/era-unpack-absolute").exists(), "{what}");
        }
    }

    #[test]
    fn a_long_name_header_of_megabytes_is_refused_before_it_is_read() {
        // Zeros compress to almost nothing: a small layer that declares a
        // long name of 2 MiB (gigabytes would do the same, in memory).
        let (dir, root, _) = setup();
        let layer = Tar::new()
            .entry("././@LongLink", tar::EntryType::GNULongName, 0o644, "", &vec![0u8; 2 << 20])
            .file("after", "x")
            .write(dir.path(), "bomb", true);
        let err = unpack_layers(&[layer], &root, &UnpackPolicy::default()).unwrap_err();
        assert!(err.to_string().contains("tar extension header (L) of 2097152 bytes"), "{err}");
    }

    #[test]
    fn a_symlinked_parent_from_a_lower_layer_is_not_followed() {
        let (dir, root, sentinel) = setup();
        // Lower layer: a legitimate-looking absolute symlink to a directory.
        let l1 = Tar::new().entry("data", tar::EntryType::Symlink, 0o777, "/", b"").write(dir.path(), "l1", false);
        let l2 = Tar::new().file("data/sentinel", "pwned").write(dir.path(), "l2", false);
        let err = unpack_layers(&[l1, l2], &root, &UnpackPolicy::default()).unwrap_err();
        assert!(err.to_string().contains("parent \"data\" is a symlink"), "{err}");
        assert_eq!(fs::read(&sentinel).unwrap(), b"untouched");
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limits() {
        let (dir, root, _) = setup();
        let big = vec![0u8; 4 << 20];
        let layer = Tar::new().entry("zeros", tar::EntryType::Regular, 0o644, "", &big).write(dir.path(), "bomb", true);
        assert!(fs::metadata(&layer.path).unwrap().len() < 64 << 10, "compresses well");
        let policy = UnpackPolicy { max_bytes: 1 << 20, ..UnpackPolicy::default() };
        let err = unpack_layers(std::slice::from_ref(&layer), &root, &policy).unwrap_err();
        assert!(matches!(err, UnpackError::Limit { what: "the unpacked size", .. }), "{err}");
        let many = (0..20).fold(Tar::new(), |t, i| t.file(&format!("f{i}"), "x")).write(dir.path(), "many", false);
        let policy = UnpackPolicy { max_entries: 10, ..UnpackPolicy::default() };
        let err = unpack_layers(&[many], &root.join("second"), &policy).unwrap_err();
        assert!(matches!(err, UnpackError::Limit { what: "the entry count", .. }), "{err}");
    }

    #[test]
    fn link_targets_are_judged_from_the_links_directory() {
        let p = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
        assert!(stays_inside(&p("usr/bin/env"), "/bin/sh"));
        assert!(stays_inside(&p("usr/bin/env"), "../../bin/sh"));
        assert!(!stays_inside(&p("usr/bin/env"), "../../../etc"));
        assert!(!stays_inside(&p("a"), ".."));
    }
}
