//! A tiny HTTP/1.0 file server on 127.0.0.1 for tests that need a URL to download from
//! (`ADD <url>`, a remote Dockerfile or context): real sockets, one request per connection.

use std::io::{BufRead, Write};
use std::net::SocketAddr;

/// Serves `files` (path, body) from a thread until the process ends: 200 with the body and a
/// fixed `Last-Modified` (what `ADD <url>` takes as the file's time) for a listed path, 404
/// for any other. Returns the address it listens on.
pub fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let Ok(read_half) = conn.try_clone() else {
                continue;
            };
            let mut reader = std::io::BufReader::new(read_half);
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let path = request_line.split_whitespace().nth(1).unwrap_or("");
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let _ = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => conn
                    .write_all(
                        format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: \
                             {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| conn.write_all(body)),
                None => conn.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
            };
        }
    });
    Ok(addr)
}
