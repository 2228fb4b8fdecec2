//! The Dockerfile language as dockerd's classic builder reads it, in three layers:
//!
//! - [`parse`]: text → [`Dockerfile`], a list of [`Instruction`]s with their line numbers, flags
//!   (`--from=x`) and raw arguments: parser directives (`# escape=`, `# syntax=` noted),
//!   comments, line continuations with the escape character, heredocs (`<<EOF`, `<<-EOF`,
//!   quoted names) for `RUN`, `COPY` and `ADD`.
//! - [`lex`]: variable substitution as the builder's shell lexer does it (`$V`, `${V}`,
//!   `${V:-word}`, `${V:+word}`, `${V-word}`, `${V+word}`, `${V:?msg}`, quotes, escapes).
//! - [`command`]: one instruction with the variables in scope → a typed [`Command`], and
//!   [`stages`]: the `FROM` stages with `AS` names, the meta `ARG`s before the first `FROM`.
//!
//! Everything here is outside input (the build context comes from the client): no input may
//! panic, and the fuzz target `dockerfile` holds the crate to it.

pub mod command;
pub mod lex;
mod parse;

pub use command::{Command, CopyArgs, CopySource, Health, ShellOrExec};
pub use parse::parse;

/// A parse or substitution error with the line it is on (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dockerfile parse error on line {line}: {message}")]
pub struct Error {
    pub line: usize,
    pub message: String,
}

impl Error {
    pub fn new(line: usize, message: impl Into<String>) -> Self {
        Error {
            line,
            message: message.into(),
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The `# escape=` directive's character (`\` by default, or `` ` ``).
    pub escape: char,
    /// The `# syntax=` directive: BuildKit's frontend image, which the classic builder notes
    /// and ignores.
    pub syntax: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// A heredoc (`<<EOF` ... `EOF`) attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    /// The lines up to the terminator, each with its newline (leading tabs removed for `<<-`).
    pub content: String,
    /// False when the name was quoted (`<<"EOF"`): no variable expansion in the content.
    pub expand: bool,
}

/// One instruction as written: keyword, flags and the rest of its (joined) line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line of the keyword.
    pub line: usize,
    /// Upper case: `RUN`, `COPY`, ...
    pub keyword: String,
    /// Leading `--name[=value]` flags, as written (without the dashes): `("from", Some("a"))`.
    pub flags: Vec<(String, Option<String>)>,
    /// The arguments after the flags, continuations joined, leading/trailing space trimmed.
    pub args: String,
    pub heredocs: Vec<Heredoc>,
    /// The instruction as the builder prints it (`Step 2/5 : RUN echo hi`): keyword, flags
    /// and arguments on one line.
    pub original: String,
}

impl Instruction {
    /// The value of flag `name` (the last one if repeated); `Some("")` for a bare `--name`.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }
}

/// The instructions that may appear in a Dockerfile (dockerd's list).
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// One `FROM` stage: its base, optional `AS` name, and its instructions (`FROM` excluded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `FROM` instruction itself.
    pub from: Instruction,
    /// The `AS` name, lower-cased (stage names are case-insensitive).
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// The meta `ARG`s (before the first `FROM`) and the stages. Err when an instruction other
/// than `ARG` comes before the first `FROM`, or there is no `FROM`.
pub fn stages(df: &Dockerfile) -> Result<(Vec<Instruction>, Vec<Stage>), Error> {
    let mut meta = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for i in &df.instructions {
        if i.keyword == "FROM" {
            let name = command::from_stage_name(i)?;
            if let Some(n) = &name {
                if stages.iter().any(|s| s.name.as_ref() == Some(n)) {
                    return Err(Error::new(
                        i.line,
                        format!("duplicate name {n:?}: the stage name must be unique"),
                    ));
                }
            }
            stages.push(Stage {
                from: i.clone(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(s) = stages.last_mut() {
            s.instructions.push(i.clone());
        } else if i.keyword == "ARG" {
            meta.push(i.clone());
        } else {
            return Err(Error::new(
                i.line,
                format!(
                    "{} cannot come before the first FROM (only ARG may)",
                    i.keyword
                ),
            ));
        }
    }
    if stages.is_empty() {
        return Err(Error::new(0, "the Dockerfile has no FROM instruction"));
    }
    Ok((meta, stages))
}

/// The build args dockerd predefines: usable in `RUN` without an `ARG`, and left out of the
/// image's history and of the cache key.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];
