//! Lets clients built on grpc's C core (Python `grpcio`, C++, Ruby) talk to
//! erad with their defaults.
//!
//! For a `unix:/run/era/erad.sock` target, grpc core sends the socket path,
//! percent-encoded, as the HTTP/2 `:authority` (`run%2Fera%2Ferad.sock`).
//! h2 parses `:authority` as a URI authority, where `%` outside a userinfo
//! is not allowed, and resets the stream with PROTOCOL_ERROR before tonic
//! sees the request; h2 has no option to relax this (hyperium/h2#487).
//! erad does not use the authority, so this wrapper, on the bytes a client
//! sends, turns each `%` in a plain-text `:authority` value into `-`: the same
//! length, so the HPACK dynamic table stays the same on both sides
//! (`run-2Fera-2Ferad.sock` is a valid host name). It reads just enough of
//! HTTP/2 to find that value: the frame headers, and the field
//! representations of a HEADERS frame's block (RFC 9113 §4.1, §6.2; RFC 7541
//! §6). Anything it does not understand passes through unchanged.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// A HEADERS frame larger than this passes through as it is, unbuffered.
const MAX_BUFFERED: usize = 64 << 10;

/// A server-side connection whose incoming `:authority` values are made
/// acceptable to h2. Writes pass through untouched.
pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not yet looked at.
    raw: BytesMut,
    /// Looked at, to be handed to h2.
    ready: BytesMut,
    /// Bytes of the connection preface still to pass.
    preface_left: usize,
    /// Bytes of the current frame's payload to pass without looking.
    pass_left: usize,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            preface_left: PREFACE_LEN,
            pass_left: 0,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Moves what can be decided from `raw` to `ready`.
    fn process(&mut self) {
        loop {
            let skip = if self.preface_left > 0 { &mut self.preface_left } else { &mut self.pass_left };
            if *skip > 0 {
                let n = (*skip).min(self.raw.len());
                if n == 0 {
                    return;
                }
                *skip -= n;
                self.ready.extend_from_slice(&self.raw.split_to(n));
                continue;
            }
            if self.raw.len() < FRAME_HEADER_LEN {
                return;
            }
            let len = u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
            let (kind, flags) = (self.raw[3], self.raw[4]);
            if kind == HEADERS && flags & END_HEADERS != 0 && len <= MAX_BUFFERED {
                if self.raw.len() < FRAME_HEADER_LEN + len {
                    return;
                }
                let mut frame = self.raw.split_to(FRAME_HEADER_LEN + len);
                rewrite_headers_payload(&mut frame[FRAME_HEADER_LEN..], flags);
                self.ready.extend_from_slice(&frame);
            } else {
                self.ready.extend_from_slice(&self.raw.split_to(FRAME_HEADER_LEN));
                self.pass_left = len;
            }
        }
    }
}

/// The field block of one HEADERS frame's payload, without padding and
/// priority.
fn rewrite_headers_payload(payload: &mut [u8], flags: u8) {
    let (mut start, mut end) = (0, payload.len());
    if flags & PADDED != 0 {
        let Some(&pad) = payload.first() else { return };
        start = 1;
        match end.checked_sub(pad as usize) {
            Some(e) if e >= start => end = e,
            _ => return,
        }
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    if start <= end {
        let _ = rewrite_block(&mut payload[start..end]);
    }
}

/// An HPACK integer with an `n`-bit prefix at `b[i]`: (value, next index).
fn integer(b: &[u8], i: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut value = (*b.get(i)? as usize) & max;
    let mut i = i + 1;
    if value < max {
        return Some((value, i));
    }
    for shift in (0..35).step_by(7) {
        let byte = *b.get(i)?;
        i += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Some((value, i));
        }
    }
    None
}

/// A string literal at `b[i]`: (Huffman-coded, its bytes' range).
fn string(b: &[u8], i: usize) -> Option<(bool, std::ops::Range<usize>)> {
    let huffman = *b.get(i)? & 0x80 != 0;
    let (len, start) = integer(b, i, 7)?;
    let end = start.checked_add(len).filter(|e| *e <= b.len())?;
    Some((huffman, start..end))
}

/// Walks a field block; in each plain-text `:authority` value (by the static
/// table's index 1 or by name) without a userinfo, `%` becomes `-`. Stops at
/// the first thing it cannot read (the rest is left as it is).
fn rewrite_block(b: &mut [u8]) -> Option<()> {
    let mut i = 0;
    while i < b.len() {
        let first = b[i];
        if first & 0x80 != 0 {
            // Indexed field.
            i = integer(b, i, 7)?.1;
            continue;
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            i = integer(b, i, 5)?.1;
            continue;
        }
        // A literal: with incremental indexing (01), or without / never
        // indexed (0000 / 0001).
        let prefix = if first & 0x40 != 0 { 6 } else { 4 };
        let (index, next) = integer(b, i, prefix)?;
        i = next;
        let mut authority = index == 1;
        if index == 0 {
            let (huffman, name) = string(b, i)?;
            authority = !huffman && &b[name.clone()] == b":authority";
            i = name.end;
        }
        let (huffman, value) = string(b, i)?;
        i = value.end;
        if authority && !huffman && !b[value.clone()].contains(&b'@') {
            for c in &mut b[value] {
                if *c == b'%' {
                    *c = b'-';
                }
            }
        }
    }
    Some(())
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What never made a whole frame goes as it is; h2 judges it.
                let rest = this.raw.split();
                if rest.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.ready = rest;
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(read.filled());
                        this.process();
                    }
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = <tokio::net::UnixStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    /// A literal with incremental indexing of static name `index`.
    fn literal(index: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40 | index, value.len() as u8];
        b.extend_from_slice(value);
        b
    }

    async fn through(input: Vec<u8>, chunk: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let writer = tokio::spawn(async move {
            for piece in input.chunks(chunk) {
                tokio::io::AsyncWriteExt::write_all(&mut client, piece).await.unwrap();
            }
        });
        let mut out = Vec::new();
        let mut fixed = AuthorityFix::new(server);
        writer.await.unwrap();
        let mut buf = [0u8; 7];
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(200), fixed.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        out
    }

    #[tokio::test]
    async fn a_percent_encoded_authority_is_made_a_host_name_and_nothing_else_changes() {
        // :method POST (indexed 3), :scheme http (indexed 6), :path, :authority.
        let mut block = vec![0x83, 0x86];
        block.extend(literal(4, b"/grpc.health.v1.Health/Check"));
        block.extend(literal(1, b"tmp%2Fera%2Ferad.sock"));
        block.extend(literal(31, b"application/grpc")); // another literal after it
        let headers = frame(HEADERS, END_HEADERS, &block);
        let data = frame(0x0, 0x1, b"100% of this stays: %%");
        let input = [PREFACE, &headers, &data].concat();
        for chunk in [1, 3, 9, 4096] {
            let out = through(input.clone(), chunk).await;
            let expected = [
                PREFACE,
                &frame(HEADERS, END_HEADERS, &{
                    let mut b = vec![0x83, 0x86];
                    b.extend(literal(4, b"/grpc.health.v1.Health/Check"));
                    b.extend(literal(1, b"tmp-2Fera-2Ferad.sock"));
                    b.extend(literal(31, b"application/grpc"));
                    b
                }),
                &data,
            ]
            .concat();
            assert_eq!(out, expected, "read in chunks of {chunk}");
        }
    }

    #[test]
    fn only_a_plain_text_authority_without_userinfo_is_touched() {
        // By literal name, padded and with priority.
        let mut block = vec![0x00, 10];
        block.extend_from_slice(b":authority");
        block.extend_from_slice(&[3, b'a', b'%', b'b']);
        let mut payload = vec![2];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        rewrite_headers_payload(&mut payload, PADDED | PRIORITY);
        assert_eq!(&payload[6 + 13..6 + 16], b"a-b");
        // A userinfo's % is legal: left alone. So is a Huffman-coded value,
        // another header's value, and a block cut short.
        for (mut block, why) in [
            (literal(1, b"u%40x@host"), "userinfo"),
            (vec![0x41, 0x83, b'a', b'%', b'b'], "huffman"),
            (literal(5, b"a%b"), "not the authority"),
            (vec![0x41, 9, b'a', b'%'], "cut short"),
        ] {
            let before = block.clone();
            let _ = rewrite_block(&mut block);
            assert_eq!(block, before, "{why}");
        }
    }
}
