//! `COPY` and `ADD` as a layer: the sources (from the context or another stage's root)
//! resolved inside their root, wildcards expanded, the destination placed as dockerd's copier
//! does, and a tar of exactly the new files (with their parent directories) written for the
//! image store. A digest of the sources' content is the step's cache key.

use super::context::{self, clean, glob, has_wildcards, resolve};
use dockerfile::{CopyArgs, CopySource};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

#[derive(Debug)]
enum Item {
    /// A file, link or directory (a directory's contents) placed at `dest`.
    Tree {
        src: PathBuf,
        dest: PathBuf,
    },
    /// `ADD` of a local archive: its entries unpacked under `dest`.
    Archive {
        src: PathBuf,
        dest: PathBuf,
    },
    Inline {
        content: Vec<u8>,
        dest: PathBuf,
    },
}

#[derive(Debug)]
pub struct Plan {
    items: Vec<Item>,
    /// sha256 of what is copied (names, modes, contents), and where to.
    pub digest: String,
}

/// `uid[:gid]` or names looked up in the destination root's /etc/passwd and /etc/group.
pub fn owner(spec: &str, root: &Path) -> Result<Owner, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let table = |file: &str| -> Vec<Vec<String>> {
        std::fs::read_to_string(resolve(root, Path::new(file), true))
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()
    };
    let (uid, primary) = match u.parse::<u64>() {
        Ok(n) => (n, None),
        Err(_) => {
            let row = table("etc/passwd")
                .into_iter()
                .find(|r| r.first().map(String::as_str) == Some(u))
                .ok_or_else(|| {
                    format!("unable to find user {u}: no matching entries in passwd file")
                })?;
            let uid = row.get(2).and_then(|x| x.parse().ok()).unwrap_or(0);
            (uid, row.get(3).and_then(|x| x.parse().ok()))
        }
    };
    let gid = match g {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u64>() {
            Ok(n) => n,
            Err(_) => table("etc/group")
                .into_iter()
                .find(|r| r.first().map(String::as_str) == Some(g))
                .and_then(|r| r.get(2).and_then(|x| x.parse().ok()))
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        },
    };
    Ok(Owner { uid, gid })
}

/// Whether the file is a tar archive, maybe compressed.
pub fn is_archive(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    let Ok(mut r) = context::decompress(f) else {
        return false;
    };
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    context::is_tar(&head[..n])
}

fn hash_tree(h: &mut Sha256, p: &Path, rel: &str) -> io::Result<()> {
    let m = std::fs::symlink_metadata(p)?;
    h.update(format!("{rel}\0{:o}\0{}\0{}\0", m.mode(), m.uid(), m.gid()).as_bytes());
    if m.file_type().is_symlink() {
        h.update(std::fs::read_link(p)?.as_os_str().as_encoded_bytes());
    } else if m.is_file() {
        h.update(m.len().to_le_bytes());
        let mut f = std::fs::File::open(p)?;
        io::copy(&mut f, h)?;
    } else if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = format!("{rel}/{}", n.to_string_lossy());
            hash_tree(h, &p.join(&n), &r)?;
        }
    }
    h.update(b"\n");
    Ok(())
}

/// Whether an `ADD` source is a URL to download (dockerd: http and https only).
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Plans a COPY/ADD: `src_root` holds the sources, `dest_root` is the image it goes on
/// (to see whether the destination is a directory), `workdir` resolves a relative one;
/// `fetched` holds ADD's URLs with the files they were downloaded to (never unpacked).
pub fn plan(
    kw: &str,
    a: &CopyArgs,
    src_root: &Path,
    dest_root: &Path,
    workdir: &str,
    fetched: &[(String, PathBuf)],
) -> Result<Plan, String> {
    let mut dest = a.dest.clone();
    if !dest.starts_with('/') {
        let wd = if workdir.is_empty() { "/" } else { workdir };
        dest = format!("{}/{dest}", wd.trim_end_matches('/'));
    }
    let dest_slash = dest.ends_with('/') || dest.ends_with("/.") || a.dest == ".";
    let dest_rel = clean(&dest);
    let mut srcs: Vec<(PathBuf, String)> = Vec::new();
    let mut inline: Vec<(String, String)> = Vec::new();
    let mut remote: HashSet<PathBuf> = HashSet::new();
    for s in &a.sources {
        match s {
            CopySource::Heredoc { name, content } => inline.push((name.clone(), content.clone())),
            CopySource::Path(p) if kw == "ADD" && is_url(p) => {
                let (_, f) = fetched
                    .iter()
                    .find(|(u, _)| u == p)
                    .ok_or_else(|| format!("ADD failed: {p} was not downloaded"))?;
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                remote.insert(f.clone());
                srcs.push((f.clone(), name));
            }
            CopySource::Path(p) if p.contains("://") => {
                return Err(format!("source can't be a URL for {kw}: {p}"))
            }
            CopySource::Path(p) if has_wildcards(p) => {
                let pat = clean(p).to_string_lossy().to_string();
                let hits: Vec<String> = context::walk(src_root)
                    .into_iter()
                    .filter(|r| glob(&pat, r))
                    .collect();
                for h in hits {
                    srcs.push((resolve(src_root, Path::new(&h), true), h));
                }
            }
            CopySource::Path(p) => {
                let rel = clean(p);
                let full = resolve(src_root, &rel, true);
                if std::fs::symlink_metadata(&full).is_err() {
                    return Err(format!(
                        "{kw} failed: file not found in build context or excluded by \
                         .dockerignore: stat {p}: file does not exist"
                    ));
                }
                srcs.push((full, rel.to_string_lossy().to_string()));
            }
        }
    }
    if srcs.is_empty() && inline.is_empty() {
        return Err(format!("{kw} failed: no source files were specified"));
    }
    let many = srcs.len() + inline.len() > 1;
    if many && !dest_slash {
        return Err(format!(
            "When using {kw} with more than one source file, the destination must be a \
             directory and end with a /"
        ));
    }
    let dest_is_dir = dest_slash || resolve(dest_root, &dest_rel, true).is_dir();
    let mut items = Vec::new();
    let mut h = Sha256::new();
    h.update(format!("{kw}\0{dest}\0{:?}\0{:?}\0", a.chown, a.chmod).as_bytes());
    for (full, rel) in srcs {
        let m = std::fs::metadata(&full).or_else(|_| std::fs::symlink_metadata(&full));
        let m = m.map_err(|e| format!("{kw} failed: {rel}: {e}"))?;
        let base = Path::new(&rel)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        hash_tree(&mut h, &full, &rel).map_err(|e| format!("{kw} failed: {rel}: {e}"))?;
        if m.is_dir() {
            items.push(Item::Tree {
                src: full,
                dest: dest_rel.clone(),
            });
        } else if kw == "ADD" && !remote.contains(&full) && is_archive(&full) {
            items.push(Item::Archive {
                src: full,
                dest: dest_rel.clone(),
            });
        } else {
            let d = if dest_is_dir {
                dest_rel.join(base)
            } else {
                dest_rel.clone()
            };
            items.push(Item::Tree { src: full, dest: d });
        }
    }
    for (name, content) in inline {
        h.update(format!("<<{name}\0").as_bytes());
        h.update(content.as_bytes());
        let d = if dest_is_dir {
            dest_rel.join(&name)
        } else {
            dest_rel.clone()
        };
        items.push(Item::Inline {
            content: content.into_bytes(),
            dest: d,
        });
    }
    Ok(Plan {
        items,
        digest: hex::encode(h.finalize()),
    })
}

struct Writer<'a, W: Write> {
    tar: tar::Builder<W>,
    dest_root: &'a Path,
    owner: Option<Owner>,
    chmod: Option<u32>,
    mtime: u64,
    done: HashSet<PathBuf>,
}

impl<W: Write> Writer<'_, W> {
    fn header(&self, kind: tar::EntryType, mode: u32, owner: Owner, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode & 0o7777);
        h.set_uid(owner.uid);
        h.set_gid(owner.gid);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    /// A directory entry for `rel`: as it is in the destination image when it exists there,
    /// else new (0755, the --chown owner).
    fn dir(&mut self, rel: &Path, like: Option<&std::fs::Metadata>) -> io::Result<()> {
        if rel.as_os_str().is_empty() || !self.done.insert(rel.to_path_buf()) {
            return Ok(());
        }
        let existing = std::fs::metadata(resolve(self.dest_root, rel, true)).ok();
        let own = self.owner.unwrap_or_default();
        let mut h = match (&existing, like) {
            (Some(m), _) if m.is_dir() => self.header(
                tar::EntryType::Directory,
                m.mode(),
                Owner {
                    uid: m.uid() as u64,
                    gid: m.gid() as u64,
                },
                m.mtime().max(0) as u64,
            ),
            (_, Some(l)) => self.header(
                tar::EntryType::Directory,
                self.chmod.unwrap_or(l.mode()),
                own,
                l.mtime().max(0) as u64,
            ),
            _ => self.header(tar::EntryType::Directory, 0o755, own, self.mtime),
        };
        self.tar.append_data(&mut h, rel, io::empty())
    }

    fn parents(&mut self, rel: &Path) -> io::Result<()> {
        let mut acc = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            acc.push(c);
            self.dir(&acc.clone(), None)?;
        }
        Ok(())
    }

    fn tree(&mut self, src: &Path, dest: &Path, top: bool) -> io::Result<()> {
        let m = std::fs::symlink_metadata(src)?;
        let m = if top && m.file_type().is_symlink() {
            std::fs::metadata(src)?
        } else {
            m
        };
        let own = self.owner.unwrap_or_default();
        if m.is_dir() {
            if top {
                self.parents(dest)?;
                if !dest.as_os_str().is_empty() {
                    self.dir(dest, Some(&m))?;
                }
            } else {
                self.done.insert(dest.to_path_buf());
                let mut h = self.header(
                    tar::EntryType::Directory,
                    self.chmod.unwrap_or(m.mode()),
                    own,
                    m.mtime().max(0) as u64,
                );
                self.tar.append_data(&mut h, dest, io::empty())?;
            }
            let mut names: Vec<_> = std::fs::read_dir(src)?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            names.sort();
            for n in names {
                self.tree(&src.join(&n), &dest.join(&n), false)?;
            }
            return Ok(());
        }
        if top {
            self.parents(dest)?;
        }
        if m.file_type().is_symlink() {
            let t = std::fs::read_link(src)?;
            let mut h = self.header(tar::EntryType::Symlink, 0o777, own, m.mtime().max(0) as u64);
            return self.tar.append_link(&mut h, dest, t);
        }
        if m.is_file() {
            let mut h = self.header(
                tar::EntryType::Regular,
                self.chmod.unwrap_or(m.permissions().mode()),
                own,
                m.mtime().max(0) as u64,
            );
            h.set_size(m.len());
            let f = std::fs::File::open(src)?;
            return self.tar.append_data(&mut h, dest, f.take(m.len()));
        }
        // Sockets, fifos and devices in a context are left out, as dockerd's copier does.
        Ok(())
    }

    fn archive(&mut self, src: &Path, dest: &Path) -> io::Result<()> {
        self.parents(dest)?;
        self.dir(dest, None)?;
        let f = std::fs::File::open(src)?;
        let mut a = tar::Archive::new(context::decompress(f)?);
        for e in a.entries()? {
            let mut e = e?;
            let p = e.path()?.to_string_lossy().to_string();
            let rel = clean(&p);
            let name = rel.file_name().map(|n| n.to_string_lossy().to_string());
            if rel.as_os_str().is_empty() || name.is_some_and(|n| n.starts_with(".wh.")) {
                continue;
            }
            let to = dest.join(&rel);
            self.parents(&to)?;
            let mut h = e.header().clone();
            // Fields the archive left blank or garbled are written as zeros, not copied.
            h.set_uid(h.uid().unwrap_or(0));
            h.set_gid(h.gid().unwrap_or(0));
            h.set_mtime(h.mtime().unwrap_or(self.mtime));
            h.set_mode(h.mode().unwrap_or(0o644));
            if let Some(o) = self.owner {
                h.set_uid(o.uid);
                h.set_gid(o.gid);
            }
            match h.entry_type() {
                tar::EntryType::Directory if self.done.insert(to.clone()) => {
                    self.tar.append_data(&mut h, &to, io::empty())?;
                }
                tar::EntryType::Directory => {}
                tar::EntryType::Symlink => {
                    let t = e.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
                    self.tar.append_link(&mut h, &to, t)?;
                }
                tar::EntryType::Link => {
                    let t = e.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
                    let t = dest.join(clean(&t.to_string_lossy()));
                    self.tar.append_link(&mut h, &to, t)?;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let mut h2 = h.clone();
                    h2.set_entry_type(tar::EntryType::Regular);
                    self.tar.append_data(&mut h2, &to, &mut e)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Writes the plan's layer tar to `out`. `mtime` dates the directories it creates.
pub fn write<W: Write>(
    p: &Plan,
    dest_root: &Path,
    owner: Option<Owner>,
    chmod: Option<u32>,
    mtime: u64,
    out: W,
) -> io::Result<W> {
    let mut w = Writer {
        tar: tar::Builder::new(out),
        dest_root,
        owner,
        chmod,
        mtime,
        done: HashSet::new(),
    };
    w.tar.follow_symlinks(false);
    for it in &p.items {
        match it {
            Item::Tree { src, dest } => w.tree(src, dest, true)?,
            Item::Archive { src, dest } => w.archive(src, dest)?,
            Item::Inline { content, dest } => {
                w.parents(dest)?;
                let mut h = w.header(
                    tar::EntryType::Regular,
                    chmod.unwrap_or(0o644),
                    owner.unwrap_or_default(),
                    mtime,
                );
                h.set_size(content.len() as u64);
                w.tar.append_data(&mut h, dest, &content[..])?;
            }
        }
    }
    w.tar.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                let mut p = e.path().unwrap().to_string_lossy().to_string();
                if h.entry_type().is_dir() {
                    p.push('/');
                }
                (p, h.mode().unwrap(), h.uid().unwrap(), data)
            })
            .collect()
    }

    fn args(srcs: &[&str], dest: &str) -> CopyArgs {
        CopyArgs {
            sources: srcs
                .iter()
                .map(|s| CopySource::Path(s.to_string()))
                .collect(),
            dest: dest.into(),
            ..Default::default()
        }
    }

    struct Roots {
        _d: tempfile::TempDir,
        ctx: PathBuf,
        img: PathBuf,
    }

    fn roots() -> Roots {
        let d = tempfile::tempdir().unwrap();
        let (ctx, img) = (d.path().join("ctx"), d.path().join("img"));
        for f in ["a.txt", "b.txt", "dir/x", "dir/sub/y"] {
            let p = ctx.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
        std::fs::create_dir_all(img.join("etc")).unwrap();
        std::fs::create_dir_all(img.join("opt/app")).unwrap();
        std::fs::write(
            img.join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1001::/:\n",
        )
        .unwrap();
        std::fs::write(img.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        Roots { _d: d, ctx, img }
    }

    fn layer(r: &Roots, kw: &str, a: &CopyArgs, wd: &str) -> Vec<(String, u32, u64, Vec<u8>)> {
        let p = plan(kw, a, &r.ctx, &r.img, wd, &[]).unwrap();
        let owner = a.chown.as_deref().map(|c| owner(c, &r.img).unwrap());
        entries(&write(&p, &r.img, owner, a.chmod, 0, Vec::new()).unwrap())
    }

    fn names(e: &[(String, u32, u64, Vec<u8>)]) -> Vec<&str> {
        e.iter().map(|x| x.0.as_str()).collect()
    }

    #[test]
    fn file_to_file_dir_and_relative_dest() {
        let r = roots();
        let e = layer(&r, "COPY", &args(&["a.txt"], "/new/name"), "/");
        assert_eq!(names(&e), vec!["new/", "new/name"]);
        assert_eq!(e[1].3, b"a.txt");
        // An existing directory in the image takes the file under its own name.
        let e = layer(&r, "COPY", &args(&["a.txt"], "/opt/app"), "/");
        assert_eq!(names(&e), vec!["opt/", "opt/app/", "opt/app/a.txt"]);
        let e = layer(&r, "COPY", &args(&["a.txt"], "rel/"), "/work");
        assert_eq!(names(&e), vec!["work/", "work/rel/", "work/rel/a.txt"]);
    }

    #[test]
    fn directory_contents_and_dot() {
        let r = roots();
        let e = layer(&r, "COPY", &args(&["dir"], "/d"), "/");
        assert_eq!(names(&e), vec!["d/", "d/sub/", "d/sub/y", "d/x"]);
        let e = layer(&r, "COPY", &args(&["."], "/src"), "/");
        let n = names(&e);
        assert!(
            n.contains(&"src/a.txt") && n.contains(&"src/dir/sub/y"),
            "{n:?}"
        );
        // The context's symlink is copied as a link, not followed.
        assert!(n.contains(&"src/link"));
    }

    #[test]
    fn wildcards_and_many_sources() {
        let r = roots();
        let e = layer(&r, "COPY", &args(&["*.txt"], "/t/"), "/");
        assert_eq!(names(&e), vec!["t/", "t/a.txt", "t/b.txt"]);
        let err = plan("COPY", &args(&["*.txt"], "/t"), &r.ctx, &r.img, "/", &[]).unwrap_err();
        assert!(
            err.contains("must be a directory and end with a /"),
            "{err}"
        );
        let err = plan("COPY", &args(&["*.none"], "/t/"), &r.ctx, &r.img, "/", &[]).unwrap_err();
        assert!(err.contains("no source files"), "{err}");
        let err = plan("COPY", &args(&["missing"], "/t/"), &r.ctx, &r.img, "/", &[]).unwrap_err();
        assert!(err.contains("file not found in build context"), "{err}");
    }

    #[test]
    fn sources_cannot_escape_the_context() {
        let r = roots();
        std::fs::write(r.img.join("secret"), b"no").unwrap();
        let e = layer(&r, "COPY", &args(&["../../a.txt"], "/x/"), "/");
        assert_eq!(names(&e), vec!["x/", "x/a.txt"]);
        assert!(plan(
            "COPY",
            &args(&["../img/secret"], "/x/"),
            &r.ctx,
            &r.img,
            "/",
            &[]
        )
        .is_err());
        // `link` points at /etc/passwd: followed inside the context, where it does not exist.
        assert!(plan("COPY", &args(&["link"], "/p"), &r.ctx, &r.img, "/", &[]).is_err());
    }

    #[test]
    fn chown_and_chmod() {
        let r = roots();
        let mut a = args(&["a.txt"], "/o/");
        a.chown = Some("app:staff".into());
        a.chmod = Some(0o600);
        let e = layer(&r, "COPY", &a, "/");
        assert_eq!(e[0].2, 1000, "a new directory gets the owner");
        assert_eq!((e[1].1, e[1].2), (0o600, 1000));
        assert_eq!(
            owner("app", &r.img).unwrap(),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(owner("7:8", &r.img).unwrap(), Owner { uid: 7, gid: 8 });
        assert!(owner("nobody", &r.img).is_err());
        assert!(owner("0:nogroup", &r.img).is_err());
    }

    #[test]
    fn add_unpacks_local_archives_and_refuses_urls() {
        let r = roots();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o640);
        b.append_data(&mut h, "in/tar.txt", &b"ok"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t).unwrap();
        std::fs::write(r.ctx.join("x.tar.gz"), gz.finish().unwrap()).unwrap();
        let e = layer(&r, "ADD", &args(&["x.tar.gz"], "/u"), "/");
        assert_eq!(names(&e), vec!["u/", "u/in/", "u/in/tar.txt"]);
        assert_eq!((e[2].1, e[2].3.as_slice()), (0o640, &b"ok"[..]));
        // COPY copies the archive as it is.
        let e = layer(&r, "COPY", &args(&["x.tar.gz"], "/u/"), "/");
        assert_eq!(names(&e), vec!["u/", "u/x.tar.gz"]);
        let err = plan(
            "COPY",
            &args(&["http://h/x"], "/"),
            &r.ctx,
            &r.img,
            "/",
            &[],
        )
        .unwrap_err();
        assert!(err.contains("source can't be a URL for COPY"), "{err}");
        // ADD of a URL: the downloaded file as it is (an archive is not unpacked).
        let dl = r.ctx.join("dl");
        std::fs::create_dir_all(&dl).unwrap();
        std::fs::copy(r.ctx.join("x.tar.gz"), dl.join("x.tar.gz")).unwrap();
        let fetched = [("http://h/x.tar.gz".to_string(), dl.join("x.tar.gz"))];
        let a = args(&["http://h/x.tar.gz"], "/u/");
        let p = plan("ADD", &a, &r.ctx, &r.img, "/", &fetched).unwrap();
        let e = entries(&write(&p, &r.img, None, None, 0, Vec::new()).unwrap());
        assert_eq!(names(&e), vec!["u/", "u/x.tar.gz"]);
    }

    #[test]
    fn heredoc_sources_and_digest() {
        let r = roots();
        let a = CopyArgs {
            sources: vec![CopySource::Heredoc {
                name: "EOF".into(),
                content: "hi\n".into(),
            }],
            dest: "/etc/motd".into(),
            ..Default::default()
        };
        let e = layer(&r, "COPY", &a, "/");
        assert_eq!(names(&e), vec!["etc/", "etc/motd"]);
        assert_eq!(e[1].3, b"hi\n");
        // The digest follows content, not time.
        let d1 = plan("COPY", &args(&["a.txt"], "/"), &r.ctx, &r.img, "/", &[])
            .unwrap()
            .digest;
        let d2 = plan("COPY", &args(&["a.txt"], "/"), &r.ctx, &r.img, "/", &[])
            .unwrap()
            .digest;
        assert_eq!(d1, d2);
        std::fs::write(r.ctx.join("a.txt"), b"changed").unwrap();
        let d3 = plan("COPY", &args(&["a.txt"], "/"), &r.ctx, &r.img, "/", &[])
            .unwrap()
            .digest;
        assert_ne!(d1, d3);
    }
}
