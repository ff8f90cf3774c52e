//! A reader in front of the `tar` crate that follows the archive's framing
//! (512-byte headers, each entry's data padded to 512) and refuses an
//! extension header (GNU long name `L` or long link `K`, PAX `x` or `g`)
//! bigger than [`EXTENSION_LIMIT`] as its header goes by: the crate reads
//! such a header's whole body into memory before erad sees an entry, so a
//! small compressed layer declaring a long name of gigabytes would exhaust
//! erad's memory. A PAX `size` record is followed for the next entry's
//! data, as the crate does; old-style GNU sparse entries (`S`), whose
//! framing differs, are refused here (erad does not unpack them anyway).

use std::io::{self, Read};

/// The largest extension header body taken (PAX records of a path and a
/// link target of 4 KiB each fit many times over).
pub const EXTENSION_LIMIT: u64 = 1 << 20;

const BLOCK: u64 = 512;

enum State {
    /// Collecting a header block.
    Header { have: usize },
    /// Passing an entry's data (padded to the block size); a PAX header's
    /// body is kept to read its `size` record.
    Data { left: u64, pax: Option<Vec<u8>> },
}

pub struct TarGuard<R> {
    inner: R,
    state: State,
    header: [u8; BLOCK as usize],
    /// The data size a PAX header set for the next entry.
    next_size: Option<u64>,
    /// The first refusal, returned from every read after it.
    failed: Option<String>,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard { inner, state: State::Header { have: 0 }, header: [0; BLOCK as usize], next_size: None, failed: None }
    }

    fn refuse(&mut self, why: String) -> io::Error {
        self.failed = Some(why.clone());
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Follows the framing over bytes that are about to be handed on.
    fn observe(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { have } => {
                    let n = bytes.len().min(BLOCK as usize - *have);
                    self.header[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == BLOCK as usize {
                        self.state = self.entry()?;
                    }
                }
                State::Data { left, pax } => {
                    let n = (bytes.len() as u64).min(*left) as usize;
                    if let Some(body) = pax {
                        body.extend_from_slice(&bytes[..n]);
                    }
                    *left -= n as u64;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        if let Some(body) = pax.take() {
                            self.next_size = pax_size(&body)?;
                        }
                        self.state = State::Header { have: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// The state after a complete header block.
    fn entry(&mut self) -> Result<State, String> {
        let h = &self.header;
        if h.iter().all(|b| *b == 0) {
            // End-of-archive blocks (and anything after them) are headers.
            return Ok(State::Header { have: 0 });
        }
        let kind = h[156];
        let size = header_size(&h[124..136]).ok_or("a tar header's size field is not a number")?;
        let extension = matches!(kind, b'L' | b'K' | b'x' | b'g');
        if extension && size > EXTENSION_LIMIT {
            return Err(format!(
                "a tar extension header ({}) of {size} bytes; erad takes at most {EXTENSION_LIMIT}",
                kind as char
            ));
        }
        if kind == b'S' {
            return Err("GNU sparse entries are not supported".into());
        }
        // A PAX size counts for the entry after the header, not for
        // another extension header in between.
        let size = if extension { size } else { self.next_size.take().unwrap_or(size) };
        let padded = size.div_ceil(BLOCK).checked_mul(BLOCK).ok_or("a tar entry's size overflows")?;
        if padded == 0 {
            return Ok(State::Header { have: 0 });
        }
        let pax = (kind == b'x').then(Vec::new);
        Ok(State::Data { left: padded, pax })
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(why) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        let n = self.inner.read(buf)?;
        if let Err(why) = self.observe(&buf[..n]) {
            return Err(self.refuse(why));
        }
        Ok(n)
    }
}

/// A header's size field: octal text (NUL- or space-terminated), or
/// base-256 when its first byte's high bit is set.
fn header_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// The `size` record of a PAX header's body (`LEN key=value\n` records);
/// padding after the records is zeros.
fn pax_size(body: &[u8]) -> Result<Option<u64>, String> {
    let mut rest = body;
    let mut size = None;
    while let Some(space) = rest.iter().position(|b| *b == b' ') {
        let Some(len) = std::str::from_utf8(&rest[..space]).ok().and_then(|l| l.parse::<usize>().ok()) else {
            break;
        };
        if len <= space || len > rest.len() {
            return Err("a PAX record's length is wrong".into());
        }
        let record = &rest[space + 1..len];
        if let Some(v) = record.strip_prefix(b"size=") {
            let v = std::str::from_utf8(v).ok().map(|v| v.trim_end_matches('\n'));
            size = Some(v.and_then(|v| v.parse::<u64>().ok()).ok_or("a PAX size record is not a number")?);
        }
        rest = &rest[len..];
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads, so headers arrive in pieces.
        let mut g = TarGuard::new(io::Cursor::new(bytes));
        let mut buf = [0u8; 77];
        loop {
            let n = g.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    #[test]
    fn ordinary_archives_pass_unchanged_long_names_and_pax_included() {
        let long = format!("{}/file", "d".repeat(300));
        let bytes = archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_size(3000);
            h.set_mode(0o644);
            b.append_pax_extensions([("path", &b"pax/name"[..]), ("size", &b"3000"[..])]).unwrap();
            b.append_data(&mut h, "short", &vec![1u8; 3000][..]).unwrap();
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "link", "l".repeat(200)).unwrap();
        });
        assert_eq!(read_all(bytes.clone()).unwrap(), bytes);
        let mut a = tar::Archive::new(TarGuard::new(io::Cursor::new(bytes)));
        let names: Vec<String> =
            a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, [long, "pax/name".into(), "link".into()]);
    }

    #[test]
    fn a_huge_extension_header_is_refused_before_its_body() {
        for kind in [b'L', b'K', b'x', b'g'] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::new(kind));
            h.set_size(50 << 30);
            h.set_cksum();
            let mut bytes = h.as_bytes().to_vec();
            bytes.extend_from_slice(&[0u8; 4096]);
            let err = read_all(bytes).unwrap_err();
            assert!(err.to_string().contains("tar extension header"), "{}: {err}", kind as char);
        }
    }

    #[test]
    fn a_pax_size_frames_the_next_entry() {
        // The ustar size says 0; PAX says 600: the next header is after
        // 1024 bytes of data, where a huge long name waits.
        let bytes = archive(|b| {
            b.append_pax_extensions([("size", &b"600"[..])]).unwrap();
            let mut h = tar::Header::new_ustar();
            h.set_path("f").unwrap();
            h.set_size(0);
            h.set_cksum();
            b.get_mut().extend_from_slice(h.as_bytes());
            b.get_mut().extend_from_slice(&[7u8; 1024]);
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(tar::EntryType::GNULongName);
            l.set_size(10 << 20);
            l.set_cksum();
            b.get_mut().extend_from_slice(l.as_bytes());
        });
        let err = read_all(bytes).unwrap_err();
        assert!(err.to_string().contains("(L) of 10485760 bytes"), "{err}");
    }
}
