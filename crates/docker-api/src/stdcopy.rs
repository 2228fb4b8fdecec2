//! The multiplexed stream framing of attach/logs for containers without a TTY
//! ("stdcopy"): an 8-byte header `[stream, 0, 0, 0, len as u32 big-endian]` then the
//! payload. With a TTY the stream is raw bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Which standard stream a chunk belongs to (the header's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdStream {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
}

/// One chunk of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: StdStream,
    pub data: Bytes,
}

impl Frame {
    pub fn stdout(data: impl Into<Bytes>) -> Self {
        Frame {
            stream: StdStream::Stdout,
            data: data.into(),
        }
    }
    pub fn stderr(data: impl Into<Bytes>) -> Self {
        Frame {
            stream: StdStream::Stderr,
            data: data.into(),
        }
    }
}

/// Encodes a frame for the wire: multiplexed unless `tty`.
pub fn encode(frame: &Frame, tty: bool) -> Bytes {
    if tty {
        return frame.data.clone();
    }
    let mut b = BytesMut::with_capacity(8 + frame.data.len());
    b.put_u8(frame.stream as u8);
    b.put_bytes(0, 3);
    b.put_u32(frame.data.len() as u32);
    b.put_slice(&frame.data);
    b.freeze()
}

/// Decodes a complete multiplexed buffer (used by tests and clients).
pub fn decode(mut buf: &[u8]) -> Option<Vec<Frame>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 8 {
            return None;
        }
        let stream = match buf[0] {
            0 => StdStream::Stdin,
            1 => StdStream::Stdout,
            2 => StdStream::Stderr,
            _ => return None,
        };
        let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        if buf.len() < 8 + len {
            return None;
        }
        out.push(Frame {
            stream,
            data: Bytes::copy_from_slice(&buf[8..8 + len]),
        });
        buf = &buf[8 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let b = encode(&Frame::stderr("hi\n"), false);
        assert_eq!(&b[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
    }

    #[test]
    fn tty_is_raw() {
        assert_eq!(&encode(&Frame::stdout("x"), true)[..], b"x");
    }

    #[test]
    fn round_trip_and_truncation() {
        let mut all = Vec::new();
        all.extend_from_slice(&encode(&Frame::stdout("out"), false));
        all.extend_from_slice(&encode(&Frame::stderr(vec![7u8; 300]), false));
        let frames = decode(&all).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0], Frame::stdout("out"));
        assert_eq!(frames[1].data.len(), 300);
        assert!(decode(&all[..all.len() - 1]).is_none());
    }
}
