//! The build context: a tar (plain, gzip, bzip2, xz) unpacked with layer-unpack's rules (no
//! entry lands outside the directory), the Dockerfile and `.dockerignore` dropped from it as
//! dockerd does (the client has applied `.dockerignore`), and the path helpers COPY
//! needs (wildcards, resolving paths inside a root without following links out of it).

use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// Opens a possibly compressed stream: gzip and zstd (layer-unpack), bzip2, xz.
pub fn decompress<'a, R: Read + Send + 'a>(r: R) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut r = BufReader::new(r);
    let head = r.fill_buf()?;
    if head.starts_with(b"BZh") {
        return Ok(Box::new(bzip2_rs::DecoderReader::new(r)));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        // lzma-rs decodes whole streams: into memory (a context is bounded by the request).
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut r, &mut out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("xz: {e}")))?;
        return Ok(Box::new(io::Cursor::new(out)));
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(r)));
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
        return Ok(Box::new(d));
    }
    Ok(Box::new(r))
}

/// Whether the stream looks like a tar archive (after decompression): a ustar/gnu magic at
/// offset 257 of the first header.
pub fn is_tar(head: &[u8]) -> bool {
    head.len() >= 262 && (&head[257..262] == b"ustar")
}

/// Unpacks the context tar (maybe compressed) into `dir`.
pub fn unpack(r: impl Read + Send, dir: &Path) -> Result<(), String> {
    let rd = decompress(r).map_err(|e| format!("reading the build context: {e}"))?;
    layer_unpack::unpack(rd, dir, &[]).map_err(|e| format!("unpacking the build context: {e}"))?;
    Ok(())
}

/// A path made relative and `..`-free lexically (`..` stops at the root, as in a chroot).
pub fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// `rel` inside `root`, following symlinks as a chroot would (absolute targets are from
/// `root`), never leaving `root`. The last component is followed only when `follow_last`.
pub fn resolve(root: &Path, rel: &Path, follow_last: bool) -> PathBuf {
    let mut parts: Vec<std::ffi::OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            _ => None,
        })
        .collect();
    parts.reverse();
    let mut cur = PathBuf::new();
    let mut hops = 0;
    while let Some(p) = parts.pop() {
        if p == ".." {
            cur.pop();
            continue;
        }
        let cand = cur.join(&p);
        let last = parts.is_empty();
        if !last || follow_last {
            if let Ok(t) = std::fs::read_link(root.join(&cand)) {
                hops += 1;
                if hops > 40 {
                    return root.join(cand);
                }
                if t.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut add: Vec<std::ffi::OsString> = t
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                add.reverse();
                parts.extend(add);
                continue;
            }
        }
        cur = cand;
    }
    root.join(cur)
}

/// Go's `filepath.Match` on one path: `*` and `?` do not cross `/`, `[a-z]`, `[^x]`, `\`
/// escapes; `**` (as `.dockerignore` has it) matches any number of components.
pub fn glob(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n, 0)
}

fn glob_at(p: &[char], n: &[char], depth: usize) -> bool {
    if depth > 64 {
        return false;
    }
    if p.is_empty() {
        return n.is_empty();
    }
    match p[0] {
        '*' if p.get(1) == Some(&'*') => {
            // `**/` may match nothing; `**` anything, slashes included.
            let slash = p.get(2) == Some(&'/');
            let rest = if slash { &p[3..] } else { &p[2..] };
            (0..=n.len())
                .any(|i| (!slash || i == 0 || n[i - 1] == '/') && glob_at(rest, &n[i..], depth + 1))
        }
        '*' => {
            let rest = &p[1..];
            let mut i = 0;
            loop {
                if glob_at(rest, &n[i..], depth + 1) {
                    return true;
                }
                if i >= n.len() || n[i] == '/' {
                    return false;
                }
                i += 1;
            }
        }
        '?' => !n.is_empty() && n[0] != '/' && glob_at(&p[1..], &n[1..], depth + 1),
        '[' => {
            let Some(&c) = n.first() else { return false };
            let mut i = 1;
            let neg = matches!(p.get(1), Some('^' | '!'));
            if neg {
                i += 1;
            }
            let mut hit = false;
            let mut first = true;
            while i < p.len() && (first || p[i] != ']') {
                first = false;
                let lo = if p[i] == '\\' && i + 1 < p.len() {
                    i += 1;
                    p[i]
                } else {
                    p[i]
                };
                if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&x| x != ']') {
                    let hi = p[i + 2];
                    hit |= lo <= c && c <= hi;
                    i += 3;
                } else {
                    hit |= lo == c;
                    i += 1;
                }
            }
            if i >= p.len() {
                return false; // unclosed class: no match (Go reports ErrBadPattern)
            }
            hit != neg && c != '/' && glob_at(&p[i + 1..], &n[1..], depth + 1)
        }
        '\\' if p.len() > 1 => {
            !n.is_empty() && n[0] == p[1] && glob_at(&p[2..], &n[1..], depth + 1)
        }
        c => !n.is_empty() && n[0] == c && glob_at(&p[1..], &n[1..], depth + 1),
    }
}

pub fn has_wildcards(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// `.dockerignore`: patterns (cleaned, `/` stripped), `!` exceptions, `#` comments.
#[derive(Debug, Default, Clone)]
pub struct Ignore {
    pats: Vec<(String, bool)>,
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let mut pats = Vec::new();
        for l in text.lines() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (neg, p) = match l.strip_prefix('!') {
                Some(p) => (true, p.trim()),
                None => (false, l),
            };
            let c = clean(p);
            let s = c.to_string_lossy().to_string();
            if s.is_empty() {
                continue;
            }
            pats.push((s, neg));
        }
        Ignore { pats }
    }

    /// Whether `rel` (a context path) is excluded: the last pattern that matches it or one of
    /// its parent directories decides.
    pub fn excluded(&self, rel: &str) -> bool {
        let mut ex = false;
        for (p, neg) in &self.pats {
            let mut hit = glob(p, rel);
            if !hit {
                let mut acc = String::new();
                for part in rel.split('/') {
                    if !acc.is_empty() {
                        acc.push('/');
                    }
                    acc.push_str(part);
                    if acc.len() < rel.len() && glob(p, &acc) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                ex = !neg;
            }
        }
        ex
    }
}

/// What dockerd's classic builder does with `.dockerignore` once the client has applied it:
/// removes `.dockerignore` itself and the Dockerfile from the context, each only when the
/// file lists it (moby's `removeDockerfile`). docker-py lists its out-of-context
/// `.dockerfile.<random>` there, so it never reaches a `COPY .`.
pub fn remove_build_files(ctx: &Path, dockerfile: &str) -> io::Result<()> {
    let text = match std::fs::read_to_string(ctx.join(".dockerignore")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ig = Ignore::parse(&text);
    for f in [".dockerignore", dockerfile] {
        let rel = clean(f);
        if rel.as_os_str().is_empty() || !ig.excluded(&rel.to_string_lossy()) {
            continue;
        }
        let p = resolve(ctx, &rel, false);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Every path under `root` (relative, `/`-separated, sorted), not following links.
pub fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn go(root: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        let mut names: Vec<(String, bool)> = rd
            .flatten()
            .map(|e| {
                let d = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                (e.file_name().to_string_lossy().to_string(), d)
            })
            .collect();
        names.sort();
        for (n, d) in names {
            let r = if rel.is_empty() {
                n
            } else {
                format!("{rel}/{n}")
            };
            out.push(r.clone());
            if d {
                go(root, &r, out);
            }
        }
    }
    go(root, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn globs_as_go_and_dockerignore() {
        assert!(glob("*.txt", "a.txt"));
        assert!(!glob("*.txt", "d/a.txt"));
        assert!(glob("d/*.txt", "d/a.txt"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "a/c"));
        assert!(glob("[a-c]x", "bx"));
        assert!(!glob("[^a-c]x", "bx"));
        assert!(glob("**/x", "x"));
        assert!(glob("**/x", "a/b/x"));
        assert!(glob("a/**", "a/b/c"));
        assert!(glob("\\*", "*"));
        assert!(!glob("[a", "a"));
        assert!(glob("#*", "#file.txt"));
    }

    #[test]
    fn dockerignore_as_docker_pys_test_writes_it() {
        let ig = Ignore::parse(
            "ignored\nDockerfile\n.dockerignore\n ignored-with-spaces \n\
             !ignored/subdir/excepted-file\n! ignored/subdir/excepted-with-spaces  \n\n#*\n",
        );
        assert!(ig.excluded("ignored/subdir/file"));
        assert!(!ig.excluded("ignored/subdir/excepted-file"));
        assert!(!ig.excluded("ignored/subdir/excepted-with-spaces"));
        assert!(ig.excluded("ignored-with-spaces"));
        assert!(ig.excluded("Dockerfile"));
        assert!(!ig.excluded("not-ignored"));
        assert!(!ig.excluded("#file.txt"));
        let d = tempfile::tempdir().unwrap();
        for f in [
            "Dockerfile",
            "not-ignored",
            "ignored/subdir/file",
            "ignored/subdir/excepted-file",
            "ignored2/x",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        // The client applied it; the builder only drops the Dockerfile and the
        // .dockerignore when it lists them.
        std::fs::write(d.path().join(".dockerignore"), "ignored*\nDockerfile\n").unwrap();
        remove_build_files(d.path(), "Dockerfile").unwrap();
        assert!(!d.path().join("Dockerfile").exists());
        assert!(d.path().join(".dockerignore").exists(), "not listed");
        assert!(d.path().join("ignored2/x").exists(), "the client's work");
        std::fs::write(
            d.path().join(".dockerignore"),
            ".dockerignore\n.dockerfile.ab\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".dockerfile.ab"), "FROM x").unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM x").unwrap();
        remove_build_files(d.path(), ".dockerfile.ab").unwrap();
        assert!(!d.path().join(".dockerignore").exists());
        assert!(!d.path().join(".dockerfile.ab").exists());
        assert!(d.path().join("Dockerfile").exists());
    }

    #[test]
    fn resolve_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a")).unwrap();
        std::os::unix::fs::symlink("/", r.join("a/root")).unwrap();
        std::os::unix::fs::symlink("../../../etc", r.join("a/up")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve(r, Path::new("a/root/etc/passwd"), true),
            r.join("etc/passwd")
        );
        assert_eq!(resolve(r, Path::new("a/up/x"), true), r.join("etc/x"));
        assert_eq!(resolve(r, Path::new("a/root"), false), r.join("a/root"));
        assert!(resolve(r, Path::new("loop"), true).starts_with(r));
        assert_eq!(clean("/../x/./y/../z"), PathBuf::from("x/z"));
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (n, c) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, n, *c).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn contexts_plain_gzip_bzip2_xz() {
        let t = tar_of(&[("Dockerfile", b"FROM scratch\n"), ("d/f", b"hi")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t).unwrap();
        let gz = gz.finish().unwrap();
        // bzip2 and xz made by the tools on the machine, when there (else said so).
        let tool = |cmd: &str| -> Option<Vec<u8>> {
            let mut c = std::process::Command::new(cmd)
                .arg("-c")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .ok()?;
            c.stdin.take()?.write_all(&t).ok()?;
            let o = c.wait_with_output().ok()?;
            o.status.success().then_some(o.stdout)
        };
        let mut kinds = vec![("plain", t.clone()), ("gzip", gz)];
        for k in ["bzip2", "xz"] {
            match tool(k) {
                Some(b) => kinds.push((k, b)),
                None => test_skip::skip(format!("no {k} tool to make a {k} context")),
            }
        }
        for (k, bytes) in kinds {
            let d = tempfile::tempdir().unwrap();
            unpack(&bytes[..], d.path()).unwrap_or_else(|e| panic!("{k}: {e}"));
            assert_eq!(std::fs::read(d.path().join("d/f")).unwrap(), b"hi", "{k}");
        }
        // An entry that climbs out is refused.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let d = tempfile::tempdir().unwrap();
        assert!(unpack(&b.into_inner().unwrap()[..], &d.path().join("c")).is_err());
        assert!(!d.path().join("evil").exists());
    }
}
