//! One instruction, with the variables in scope, as a typed [`Command`]: which instructions
//! expand variables (as dockerd: not `RUN`, `CMD`, `ENTRYPOINT`, `SHELL`, `HEALTHCHECK`),
//! the exec (JSON) and shell forms, `k=v` lists, flags each instruction takes.

use crate::lex::{self, Lookup};
use crate::{Error, Instruction};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellOrExec {
    /// Run with the stage's `SHELL` (`/bin/sh -c` by default).
    Shell(String),
    Exec(Vec<String>),
}

impl ShellOrExec {
    /// The command line: the shell form behind `shell`.
    pub fn argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            ShellOrExec::Exec(v) => v.clone(),
            ShellOrExec::Shell(s) => shell.iter().cloned().chain([s.clone()]).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    Path(String),
    /// `COPY <<EOF /dst`: a file named `name` with this content.
    Heredoc {
        name: String,
        content: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    pub sources: Vec<CopySource>,
    pub dest: String,
    pub chown: Option<String>,
    /// Octal mode (`--chmod=755`).
    pub chmod: Option<u32>,
    /// `--from=stage|image|index`.
    pub from: Option<String>,
}

/// `HEALTHCHECK`: `test` as the image config holds it (`["NONE"]`, `["CMD", ...]`,
/// `["CMD-SHELL", "..."]`); durations in nanoseconds, 0 = inherit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run {
        cmd: ShellOrExec,
        /// `RUN --network=none|default|host`.
        network: Option<String>,
    },
    Cmd(ShellOrExec),
    Entrypoint(ShellOrExec),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    /// Names with their defaults.
    Arg(Vec<(String, Option<String>)>),
    /// Normalised `port/proto`, ranges expanded.
    Expose(Vec<String>),
    Workdir(String),
    User(String),
    Volume(Vec<String>),
    StopSignal(String),
    Healthcheck(Health),
    Shell(Vec<String>),
    /// The trigger, as written (run when a build uses this image as its base).
    Onbuild(String),
    Copy(CopyArgs),
    Add(CopyArgs),
    Maintainer(String),
}

fn err(i: &Instruction, m: impl Into<String>) -> Error {
    Error::new(i.line, m)
}

fn allow_flags(i: &Instruction, ok: &[&str]) -> Result<(), Error> {
    for (f, _) in &i.flags {
        if !ok.contains(&f.as_str()) {
            let why = match (i.keyword.as_str(), f.as_str()) {
                ("RUN", "mount" | "security")
                | ("COPY" | "ADD", "link" | "parents" | "exclude") => {
                    " (it needs BuildKit, which this engine does not support)"
                }
                _ => "",
            };
            return Err(err(
                i,
                format!("unknown flag: --{f} for {}{why}", i.keyword),
            ));
        }
    }
    Ok(())
}

/// The JSON exec form, if the arguments are a JSON array of strings.
pub fn json_form(args: &str) -> Option<Vec<String>> {
    let t = args.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

fn shell_or_exec(i: &Instruction) -> ShellOrExec {
    match json_form(&i.args) {
        Some(v) => ShellOrExec::Exec(v),
        None => ShellOrExec::Shell(i.args.clone()),
    }
}

/// `FROM image [AS name]`: the stage name (lower case), validated.
pub(crate) fn from_stage_name(i: &Instruction) -> Result<Option<String>, Error> {
    let w = lex::split_raw(&i.args, '\\');
    match w.len() {
        1 => Ok(None),
        3 if w[1].eq_ignore_ascii_case("as") => {
            let n = w[2].to_ascii_lowercase();
            let ok = n.starts_with(|c: char| c.is_ascii_lowercase())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(err(
                    i,
                    format!(
                        "invalid name for build stage: {:?}, name can't start with a number \
                         or contain symbols",
                        w[2]
                    ),
                ));
            }
            Ok(Some(n))
        }
        _ => Err(err(i, "FROM requires either one or three arguments")),
    }
}

fn expand<L: Lookup + ?Sized>(
    i: &Instruction,
    s: &str,
    env: &L,
    escape: char,
) -> Result<String, Error> {
    lex::word(s, env, escape).map_err(|m| err(i, m))
}

fn expand_words<L: Lookup + ?Sized>(
    i: &Instruction,
    s: &str,
    env: &L,
    escape: char,
) -> Result<Vec<String>, Error> {
    lex::words(s, env, escape).map_err(|m| err(i, m))
}

/// `ENV`/`LABEL`: `k=v ...` or the old `k v` form; both sides expanded.
fn name_vals<L: Lookup + ?Sized>(
    i: &Instruction,
    env: &L,
    escape: char,
) -> Result<Vec<(String, String)>, Error> {
    let words = lex::split_raw(&i.args, escape);
    let Some(first) = words.first() else {
        return Err(err(
            i,
            format!("{} requires at least one argument", i.keyword),
        ));
    };
    if !first.contains('=') {
        // `ENV key some value`: the rest of the line is the value.
        let rest = i.args.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(err(i, format!("{} must have two arguments", i.keyword)));
        }
        return Ok(vec![(
            expand(i, first, env, escape)?,
            expand(i, rest, env, escape)?,
        )]);
    }
    let mut out = Vec::new();
    for w in &words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(err(
                i,
                format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
            ));
        };
        let k = expand(i, k, env, escape)?;
        if k.is_empty() {
            return Err(err(i, format!("{} names must not be blank", i.keyword)));
        }
        out.push((k, expand(i, v, env, escape)?));
    }
    Ok(out)
}

/// `30s`, `1m30s`, `500ms`, `1h`, `1.5s` → nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        if b[i].is_ascii_digit() || b[i] == '.' {
            num.push(b[i]);
            i += 1;
            continue;
        }
        let mut unit = String::new();
        while i < b.len() && b[i].is_ascii_alphabetic() || (i < b.len() && b[i] == 'µ') {
            unit.push(b[i]);
            i += 1;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let mul = match unit.as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mul;
    }
    if !num.is_empty() || !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(total as i64)
}

/// `80`, `80/udp`, `8000-8002/tcp` → `port/proto` each.
fn expose_ports(i: &Instruction, words: Vec<String>) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for w in words {
        let (ports, proto) = match w.split_once('/') {
            Some((p, pr)) => (p.to_string(), pr.to_ascii_lowercase()),
            None => (w.clone(), "tcp".to_string()),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(err(i, format!("invalid proto: {proto}")));
        }
        let bad = || err(i, format!("invalid containerPort: {w}"));
        let (lo, hi) = match ports.split_once('-') {
            Some((a, b)) => (
                a.parse::<u16>().map_err(|_| bad())?,
                b.parse::<u16>().map_err(|_| bad())?,
            ),
            None => {
                let p = ports.parse::<u16>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if hi < lo {
            return Err(bad());
        }
        if usize::from(hi - lo) + out.len() > 65536 {
            return Err(bad());
        }
        for p in lo..=hi {
            out.push(format!("{p}/{proto}"));
        }
    }
    Ok(out)
}

fn copy_args<L: Lookup + ?Sized>(
    i: &Instruction,
    env: &L,
    escape: char,
) -> Result<CopyArgs, Error> {
    let mut words = match json_form(&i.args) {
        Some(v) => v
            .iter()
            .map(|w| expand(i, w, env, escape))
            .collect::<Result<Vec<_>, _>>()?,
        None => expand_words(i, &i.args, env, escape)?,
    };
    if words.len() < 2 {
        return Err(err(
            i,
            format!("{} requires at least two arguments", i.keyword),
        ));
    }
    let dest = words.pop().unwrap_or_default();
    let sources = words
        .into_iter()
        .map(|w| {
            let name = w
                .strip_prefix("<<-")
                .or_else(|| w.strip_prefix("<<"))
                .map(|n| n.trim_matches(['"', '\'']));
            match name.and_then(|n| i.heredocs.iter().find(|h| h.name == n)) {
                Some(h) => {
                    let content = if h.expand {
                        expand(i, &h.content, env, escape)?
                    } else {
                        h.content.clone()
                    };
                    Ok(CopySource::Heredoc {
                        name: h.name.clone(),
                        content,
                    })
                }
                None => Ok(CopySource::Path(w)),
            }
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let chown = match i.flag("chown") {
        Some(c) => Some(expand(i, c, env, escape)?).filter(|c| !c.is_empty()),
        None => None,
    };
    let chmod = match i.flag("chmod") {
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .ok()
                .filter(|&m| m <= 0o7777)
                .ok_or_else(|| {
                    err(
                        i,
                        format!("invalid chmod parameter {m:?}: an octal mode is required"),
                    )
                })?,
        ),
        None => None,
    };
    let from = match i.flag("from") {
        Some(f) => Some(expand(i, f, env, escape)?).filter(|f| !f.is_empty()),
        None => None,
    };
    Ok(CopyArgs {
        sources,
        dest,
        chown,
        chmod,
        from,
    })
}

/// The instruction as a command, variables from `env` (for `FROM`: the meta args).
pub fn command<L: Lookup + ?Sized>(
    i: &Instruction,
    env: &L,
    escape: char,
) -> Result<Command, Error> {
    let need_args = |i: &Instruction| {
        if i.args.is_empty() && i.heredocs.is_empty() {
            Err(err(
                i,
                format!("{} requires at least one argument", i.keyword),
            ))
        } else {
            Ok(())
        }
    };
    Ok(match i.keyword.as_str() {
        "FROM" => {
            allow_flags(i, &["platform"])?;
            need_args(i)?;
            let name = from_stage_name(i)?;
            let first = lex::split_raw(&i.args, escape)
                .into_iter()
                .next()
                .unwrap_or_default();
            let image = expand(i, &first, env, escape)?;
            if image.is_empty() {
                return Err(err(
                    i,
                    "FROM requires an image name (it expanded to nothing)",
                ));
            }
            let platform = match i.flag("platform") {
                Some(p) => Some(expand(i, p, env, escape)?).filter(|p| !p.is_empty()),
                None => None,
            };
            Command::From {
                image,
                name,
                platform,
            }
        }
        "RUN" => {
            allow_flags(i, &["network"])?;
            need_args(i)?;
            let network = i.flag("network").map(str::to_string);
            let cmd = match (json_form(&i.args), i.heredocs.first()) {
                (Some(v), _) => ShellOrExec::Exec(v),
                // `RUN <<EOF`: the heredoc is the script.
                (None, Some(h))
                    if i.args
                        .trim_start_matches(['<', '-'])
                        .trim_matches(['"', '\''])
                        == h.name =>
                {
                    ShellOrExec::Shell(h.content.clone())
                }
                // `RUN cmd <<EOF`: the shell reads the heredoc itself.
                (None, Some(_)) => {
                    let mut s = i.args.clone();
                    for h in &i.heredocs {
                        s.push('\n');
                        s.push_str(&h.content);
                        s.push_str(&h.name);
                    }
                    ShellOrExec::Shell(s)
                }
                (None, None) => ShellOrExec::Shell(i.args.clone()),
            };
            Command::Run { cmd, network }
        }
        "CMD" => {
            allow_flags(i, &[])?;
            Command::Cmd(shell_or_exec(i))
        }
        "ENTRYPOINT" => {
            allow_flags(i, &[])?;
            Command::Entrypoint(shell_or_exec(i))
        }
        "ENV" => {
            allow_flags(i, &[])?;
            Command::Env(name_vals(i, env, escape)?)
        }
        "LABEL" => {
            allow_flags(i, &[])?;
            Command::Label(name_vals(i, env, escape)?)
        }
        "ARG" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            let mut out = Vec::new();
            for w in lex::split_raw(&i.args, escape) {
                let (n, d) = match w.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(expand(i, d, env, escape)?)),
                    None => (w, None),
                };
                if n.is_empty() {
                    return Err(err(i, "ARG names can not be blank"));
                }
                out.push((n, d));
            }
            Command::Arg(out)
        }
        "EXPOSE" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            Command::Expose(expose_ports(i, expand_words(i, &i.args, env, escape)?)?)
        }
        "WORKDIR" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            Command::Workdir(expand(i, &i.args, env, escape)?)
        }
        "USER" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            Command::User(expand(i, &i.args, env, escape)?)
        }
        "VOLUME" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            let v = match json_form(&i.args) {
                Some(v) => v
                    .iter()
                    .map(|w| expand(i, w, env, escape))
                    .collect::<Result<Vec<_>, _>>()?,
                None => expand_words(i, &i.args, env, escape)?,
            };
            if v.iter().any(|p| p.trim().is_empty()) {
                return Err(err(i, "VOLUME specified can not be an empty string"));
            }
            Command::Volume(v)
        }
        "STOPSIGNAL" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            Command::StopSignal(expand(i, &i.args, env, escape)?)
        }
        "HEALTHCHECK" => {
            allow_flags(
                i,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
            )?;
            need_args(i)?;
            let (kind, rest) = match i.args.split_once([' ', '\t']) {
                Some((k, r)) => (k.to_ascii_uppercase(), r.trim()),
                None => (i.args.to_ascii_uppercase(), ""),
            };
            let mut h = Health::default();
            match kind.as_str() {
                "NONE" => {
                    if !rest.is_empty() || !i.flags.is_empty() {
                        return Err(err(i, "HEALTHCHECK NONE takes no arguments"));
                    }
                    h.test = vec!["NONE".into()];
                    return Ok(Command::Healthcheck(h));
                }
                "CMD" if !rest.is_empty() => {
                    h.test = match json_form(rest) {
                        Some(v) => std::iter::once("CMD".to_string()).chain(v).collect(),
                        None => vec!["CMD-SHELL".into(), rest.to_string()],
                    };
                }
                "CMD" => return Err(err(i, "Missing command after HEALTHCHECK CMD")),
                _ => {
                    return Err(err(
                        i,
                        format!("Unknown type {kind:?} in HEALTHCHECK (try CMD)"),
                    ))
                }
            }
            let dur = |name: &str| -> Result<i64, Error> {
                match i.flag(name) {
                    None => Ok(0),
                    Some(v) => {
                        let d = parse_duration(v)
                            .ok_or_else(|| err(i, format!("invalid --{name}: {v:?}")))?;
                        if d != 0 && d < 1_000_000 {
                            return Err(err(
                                i,
                                format!("Interval {name:?} cannot be less than 1ms"),
                            ));
                        }
                        Ok(d)
                    }
                }
            };
            h.interval = dur("interval")?;
            h.timeout = dur("timeout")?;
            h.start_period = dur("start-period")?;
            h.start_interval = dur("start-interval")?;
            h.retries = match i.flag("retries") {
                None => 0,
                Some(r) => r
                    .parse::<i64>()
                    .ok()
                    .filter(|&r| r >= 0)
                    .ok_or_else(|| err(i, format!("invalid --retries: {r:?}")))?,
            };
            Command::Healthcheck(h)
        }
        "SHELL" => {
            allow_flags(i, &[])?;
            match json_form(&i.args) {
                Some(v) if !v.is_empty() => Command::Shell(v),
                _ => return Err(err(i, "SHELL requires the arguments to be in JSON form")),
            }
        }
        "ONBUILD" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            let kw = i
                .args
                .split([' ', '\t'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            match kw.as_str() {
                "ONBUILD" => {
                    return Err(err(
                        i,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    ))
                }
                "FROM" | "MAINTAINER" => {
                    return Err(err(i, format!("{kw} isn't allowed as an ONBUILD trigger")))
                }
                _ => {}
            }
            if !crate::KEYWORDS.contains(&kw.as_str()) {
                return Err(err(i, format!("unknown instruction: {kw}")));
            }
            Command::Onbuild(i.args.clone())
        }
        "COPY" => {
            allow_flags(i, &["from", "chown", "chmod"])?;
            Command::Copy(copy_args(i, env, escape)?)
        }
        "ADD" => {
            allow_flags(i, &["chown", "chmod", "checksum", "keep-git-dir"])?;
            Command::Add(copy_args(i, env, escape)?)
        }
        "MAINTAINER" => {
            allow_flags(i, &[])?;
            need_args(i)?;
            Command::Maintainer(i.args.clone())
        }
        k => return Err(err(i, format!("unknown instruction: {k}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env() -> BTreeMap<String, String> {
        [("V", "1.0"), ("D", "/app"), ("U", "app")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cmd(line: &str) -> Result<Command, Error> {
        let df = crate::parse(&format!("FROM x\n{line}")).unwrap();
        command(df.instructions.last().unwrap(), &env(), df.escape)
    }

    #[test]
    fn from_with_meta_args_name_and_platform() {
        let df = crate::parse("FROM --platform=linux/amd64 busybox:$V AS Build").unwrap();
        assert_eq!(
            command(&df.instructions[0], &env(), '\\').unwrap(),
            Command::From {
                image: "busybox:1.0".into(),
                name: Some("build".into()),
                platform: Some("linux/amd64".into())
            }
        );
        assert!(cmd("FROM a b").is_err());
        assert!(cmd("FROM a AS 1x").is_err());
        assert!(cmd("FROM $NOPE").is_err());
    }

    #[test]
    fn run_cmd_entrypoint_forms() {
        assert_eq!(
            cmd("RUN echo $V").unwrap(),
            Command::Run {
                cmd: ShellOrExec::Shell("echo $V".into()),
                network: None
            }
        );
        assert_eq!(
            cmd("CMD [\"a\", \"$V\"]").unwrap(),
            Command::Cmd(ShellOrExec::Exec(vec!["a".into(), "$V".into()]))
        );
        // Not valid JSON: the shell form, as dockerd.
        assert_eq!(
            cmd("ENTRYPOINT [a, b]").unwrap(),
            Command::Entrypoint(ShellOrExec::Shell("[a, b]".into()))
        );
        let sh = vec!["/bin/sh".to_string(), "-c".to_string()];
        assert_eq!(
            ShellOrExec::Shell("x y".into()).argv(&sh),
            vec!["/bin/sh", "-c", "x y"]
        );
        let e = cmd("RUN --mount=type=cache,target=/x true").unwrap_err();
        assert!(e.message.contains("BuildKit"), "{e}");
        assert!(matches!(cmd("RUN --network=none true").unwrap(),
            Command::Run { network: Some(n), .. } if n == "none"));
        assert!(cmd("RUN").is_err());
    }

    #[test]
    fn run_heredocs() {
        let df = crate::parse("FROM x\nRUN <<EOF\necho a\necho b\nEOF\nRUN cat <<X > /f\nhi\nX\n")
            .unwrap();
        assert_eq!(
            command(&df.instructions[1], &env(), '\\').unwrap(),
            Command::Run {
                cmd: ShellOrExec::Shell("echo a\necho b\n".into()),
                network: None
            }
        );
        assert_eq!(
            command(&df.instructions[2], &env(), '\\').unwrap(),
            Command::Run {
                cmd: ShellOrExec::Shell("cat <<X > /f\nhi\nX".into()),
                network: None
            }
        );
    }

    #[test]
    fn env_and_label_forms() {
        assert_eq!(
            cmd("ENV A=$V B=\"x y\" C=${D}/bin").unwrap(),
            Command::Env(vec![
                ("A".into(), "1.0".into()),
                ("B".into(), "x y".into()),
                ("C".into(), "/app/bin".into())
            ])
        );
        assert_eq!(
            cmd("ENV PATH /usr/local/bin:$D").unwrap(),
            Command::Env(vec![("PATH".into(), "/usr/local/bin:/app".into())])
        );
        assert_eq!(
            cmd("LABEL \"com.x\"=\"a b\" v=1").unwrap(),
            Command::Label(vec![
                ("com.x".into(), "a b".into()),
                ("v".into(), "1".into())
            ])
        );
        assert!(cmd("ENV A=1 B").is_err());
        assert!(cmd("ENV A").is_err());
        assert!(cmd("ENV").is_err());
        assert!(cmd("LABEL =x").is_err());
    }

    #[test]
    fn args() {
        assert_eq!(
            cmd("ARG a b=${V:-x} c=").unwrap(),
            Command::Arg(vec![
                ("a".into(), None),
                ("b".into(), Some("1.0".into())),
                ("c".into(), Some("".into()))
            ])
        );
        assert!(cmd("ARG =x").is_err());
    }

    #[test]
    fn expose_workdir_user_volume_stopsignal() {
        assert_eq!(
            cmd("EXPOSE 80 53/UDP 8000-8002").unwrap(),
            Command::Expose(vec![
                "80/tcp".into(),
                "53/udp".into(),
                "8000/tcp".into(),
                "8001/tcp".into(),
                "8002/tcp".into()
            ])
        );
        assert!(cmd("EXPOSE 80/xyz").is_err());
        assert!(cmd("EXPOSE 9-1").is_err());
        assert!(cmd("EXPOSE http").is_err());
        assert!(cmd("EXPOSE 0-65535").is_ok());
        assert_eq!(
            cmd("WORKDIR $D/src").unwrap(),
            Command::Workdir("/app/src".into())
        );
        assert_eq!(cmd("USER ${U}:1").unwrap(), Command::User("app:1".into()));
        assert_eq!(
            cmd("VOLUME [\"/a\", \"$D\"]").unwrap(),
            Command::Volume(vec!["/a".into(), "/app".into()])
        );
        assert_eq!(
            cmd("VOLUME /a /b").unwrap(),
            Command::Volume(vec!["/a".into(), "/b".into()])
        );
        assert_eq!(
            cmd("STOPSIGNAL SIGKILL").unwrap(),
            Command::StopSignal("SIGKILL".into())
        );
    }

    #[test]
    fn healthcheck() {
        assert_eq!(
            cmd("HEALTHCHECK --interval=5s --retries=3 CMD curl -f x || exit 1").unwrap(),
            Command::Healthcheck(Health {
                test: vec!["CMD-SHELL".into(), "curl -f x || exit 1".into()],
                interval: 5_000_000_000,
                retries: 3,
                ..Default::default()
            })
        );
        assert_eq!(
            cmd("HEALTHCHECK CMD [\"true\"]").unwrap(),
            Command::Healthcheck(Health {
                test: vec!["CMD".into(), "true".into()],
                ..Default::default()
            })
        );
        assert_eq!(
            cmd("HEALTHCHECK none").unwrap(),
            Command::Healthcheck(Health {
                test: vec!["NONE".into()],
                ..Default::default()
            })
        );
        assert!(cmd("HEALTHCHECK CMD").is_err());
        assert!(cmd("HEALTHCHECK --interval=1us CMD x").is_err());
        assert!(cmd("HEALTHCHECK --interval=soon CMD x").is_err());
        assert!(cmd("HEALTHCHECK --retries=-1 CMD x").is_err());
        assert!(cmd("HEALTHCHECK RUN x").is_err());
        assert_eq!(parse_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("99999999999999h"), None);
    }

    #[test]
    fn shell_onbuild_maintainer() {
        assert_eq!(
            cmd("SHELL [\"/bin/bash\", \"-c\"]").unwrap(),
            Command::Shell(vec!["/bin/bash".into(), "-c".into()])
        );
        assert!(cmd("SHELL /bin/bash -c").is_err());
        assert!(cmd("SHELL []").is_err());
        assert_eq!(
            cmd("ONBUILD RUN echo $V").unwrap(),
            Command::Onbuild("RUN echo $V".into())
        );
        assert!(cmd("ONBUILD ONBUILD RUN x").is_err());
        assert!(cmd("ONBUILD FROM x").is_err());
        assert!(cmd("ONBUILD NOPE x").is_err());
        assert_eq!(
            cmd("MAINTAINER me").unwrap(),
            Command::Maintainer("me".into())
        );
    }

    #[test]
    fn copy_and_add() {
        assert_eq!(
            cmd("COPY --from=build --chown=$U:$U --chmod=750 a* \"b c\" $D/").unwrap(),
            Command::Copy(CopyArgs {
                sources: vec![
                    CopySource::Path("a*".into()),
                    CopySource::Path("b c".into())
                ],
                dest: "/app/".into(),
                chown: Some("app:app".into()),
                chmod: Some(0o750),
                from: Some("build".into()),
            })
        );
        assert_eq!(
            cmd("ADD [\"x.tar\", \"$D\"]").unwrap(),
            Command::Add(CopyArgs {
                sources: vec![CopySource::Path("x.tar".into())],
                dest: "/app".into(),
                ..Default::default()
            })
        );
        assert!(cmd("COPY a").is_err());
        assert!(cmd("COPY --chmod=999 a b").is_err());
        assert!(cmd("COPY --link a b")
            .unwrap_err()
            .message
            .contains("BuildKit"));
        assert!(cmd("ADD --from=x a b").is_err());
        let df = crate::parse("FROM x\nCOPY <<EOF /etc/motd\nhello $U\nEOF\n").unwrap();
        assert_eq!(
            command(&df.instructions[1], &env(), '\\').unwrap(),
            Command::Copy(CopyArgs {
                sources: vec![CopySource::Heredoc {
                    name: "EOF".into(),
                    content: "hello app\n".into()
                }],
                dest: "/etc/motd".into(),
                ..Default::default()
            })
        );
    }
}
