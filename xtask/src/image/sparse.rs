//! Sparse files: copy only non-zero blocks, and visit the non-zero clusters of a raw image
//! (holes are found with `SEEK_DATA`/`SEEK_HOLE`, so a 4 GiB mostly empty disk costs little).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

const SEEK_DATA: i32 = 3;
const SEEK_HOLE: i32 = 4;

extern "C" {
    fn lseek(fd: i32, offset: i64, whence: i32) -> i64;
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Is `b` all zero? (Compared against zeros with memcmp: fast even in a debug build.)
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The (start, end) byte ranges of `f` that may hold data; the whole file if the file system
/// cannot tell.
pub fn data_ranges(f: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on a file descriptor we own; it only moves the file offset.
        let start = unsafe { lseek(fd, pos as i64, SEEK_DATA) };
        if start < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(6) {
                break; // ENXIO: no data after pos
            }
            if out.is_empty() && pos == 0 {
                return Ok(vec![(0, len)]); // no SEEK_DATA support
            }
            return Err(err);
        }
        // SAFETY: as above.
        let end = unsafe { lseek(fd, start, SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push((start as u64, (end as u64).min(len)));
        pos = end as u64;
    }
    Ok(out)
}

/// Calls `f(offset, block)` for every non-zero `block_size` block of `file`, in order
/// (the last block is zero-padded).
pub fn for_each_nonzero_block(
    file: &File,
    block_size: u64,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; block_size as usize];
    let mut last_done: Option<u64> = None;
    for (start, end) in data_ranges(file)? {
        let mut block = start / block_size * block_size;
        while block < end {
            if last_done.is_none_or(|d| block > d) {
                buf.fill(0);
                let n = (len - block).min(block_size) as usize;
                file.read_exact_at(&mut buf[..n], block)?;
                if !is_zero(&buf) {
                    f(block, &buf)?;
                }
                last_done = Some(block);
            }
            block += block_size;
        }
    }
    Ok(())
}

/// Writes `src` into `dst` at `offset`, skipping all-zero 64 KiB blocks (left as holes).
pub fn copy_into(dst: &File, offset: u64, mut src: impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = src.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            return Ok(done);
        }
        if !is_zero(&buf[..n]) {
            dst.write_all_at(&buf[..n], offset + done)?;
        }
        done += n as u64;
    }
}

/// Copies the data of sparse file `src` into `dst` at `offset`, visiting only the ranges the
/// file system says hold data and skipping zero blocks there too.
pub fn copy_file_into(dst: &File, offset: u64, src: &File) -> io::Result<()> {
    for_each_nonzero_block(src, 64 * 1024, |off, block| {
        let len = (src.metadata()?.len() - off).min(block.len() as u64) as usize;
        dst.write_all_at(&block[..len], offset + off)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_non_zero_blocks_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create_new(dir.path().join("x")).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(&[0u8; 4096], 5 << 20).unwrap();
        f.write_all_at(b"end", (10 << 20) - 3).unwrap();
        let mut seen = Vec::new();
        for_each_nonzero_block(&f, 65536, |off, b| {
            seen.push((off, b.iter().filter(|&&x| x != 0).count()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(3 << 20, 5), ((10 << 20) - 65536, 3)]);
    }
}
