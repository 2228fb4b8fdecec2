//! Plain http(s) downloads with resume: a partial file in the cache is continued with a
//! `Range` request when the server answers 206, restarted when it answers 200.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use super::FetchError;

/// Time to establish a connection (DNS, TCP, TLS). An unreachable mirror fails within it and
/// the next source is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time to wait for the response headers and for each read of the body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per URL when the connection breaks mid-body (each resumes where it stopped).
const ATTEMPTS: u32 = 4;

fn client() -> Result<&'static Client, FetchError> {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    let c = Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(READ_TIMEOUT)
        .user_agent(concat!("axion-xtask/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchError::Network {
            url: "(client)".into(),
            message: chain(&e),
        })?;
    Ok(CLIENT.get_or_init(|| c))
}

/// The error and its causes in one line: reqwest's top level alone ("error sending request")
/// does not say what went wrong.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Downloads `url` into `part`, continuing what is already there when the server allows.
/// Returns when the body is complete; verification is the caller's job.
pub fn download(url: &str, part: &Path, label: &str) -> Result<u64, FetchError> {
    let client = client()?;
    let started = Instant::now();
    let mut last_err = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
        }
        let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        let mut req = client.get(url);
        if have > 0 {
            req = req.header(RANGE, format!("bytes={have}-"));
        }
        let mut resp = match req.send() {
            Ok(r) => r,
            // Cannot connect (no route, no DNS, refused): this mirror is out, try the next.
            Err(e) if e.is_connect() || e.is_builder() => {
                return Err(FetchError::Network {
                    url: url.into(),
                    message: chain(&e.without_url()),
                });
            }
            Err(e) => {
                last_err = Some(FetchError::Network {
                    url: url.into(),
                    message: chain(&e.without_url()),
                });
                continue;
            }
        };
        let status = resp.status();
        let append = match status {
            StatusCode::PARTIAL_CONTENT if have > 0 && range_start(&resp) == Some(have) => true,
            StatusCode::PARTIAL_CONTENT => {
                // A range we did not ask for: start over without one.
                let _ = std::fs::remove_file(part);
                last_err = Some(FetchError::Network {
                    url: url.into(),
                    message: "unexpected Content-Range".into(),
                });
                continue;
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                // The partial file is as long as (or longer than) the file: start over.
                let _ = std::fs::remove_file(part);
                continue;
            }
            s if s.is_success() => false,
            s if s.is_server_error() => {
                last_err = Some(FetchError::HttpStatus {
                    url: url.into(),
                    status: s.as_u16(),
                });
                continue;
            }
            s => {
                return Err(FetchError::HttpStatus {
                    url: url.into(),
                    status: s.as_u16(),
                })
            }
        };
        let total = resp
            .content_length()
            .map(|n| n + if append { have } else { 0 });
        let mut file = if append {
            File::options().append(true).open(part)
        } else {
            File::create(part)
        }
        .map_err(|source| FetchError::Io {
            action: "write",
            path: part.to_owned(),
            source,
        })?;
        let from = if append { have } else { 0 };
        let bar = super::progress::bytes(total, label, &format!("from {url}"), from);
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = from;
        let result = loop {
            match resp.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    file.write_all(&buf[..n]).map_err(|source| FetchError::Io {
                        action: "write",
                        path: part.to_owned(),
                        source,
                    })?;
                    got += n as u64;
                    bar.set_position(got);
                }
                Err(e) => break Err(e),
            }
        };
        file.flush().map_err(|source| FetchError::Io {
            action: "write",
            path: part.to_owned(),
            source,
        })?;
        drop(file);
        match result {
            Ok(()) if total.is_none_or(|t| t == got) => {
                super::progress::done(&bar, label, got - from, started);
                return Ok(got);
            }
            Ok(()) => {
                bar.abandon();
                last_err = Some(FetchError::Network {
                    url: url.into(),
                    message: format!(
                        "connection closed after {got} of {} bytes",
                        total.unwrap_or(0)
                    ),
                });
            }
            Err(e) => {
                bar.abandon();
                let message = format!("connection lost after {got} bytes: {}", chain(&e));
                super::progress::note(&format!("{url}: {message}; resuming"));
                last_err = Some(FetchError::Network {
                    url: url.into(),
                    message,
                });
            }
        }
    }
    Err(last_err.unwrap_or_else(|| FetchError::Network {
        url: url.into(),
        message: "gave up".into(),
    }))
}

/// The first byte of a `Content-Range: bytes A-B/N` answer.
fn range_start(resp: &reqwest::blocking::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}
