//! Text → instructions, as dockerd's parser splits a Dockerfile: directives at the top,
//! comments and blank lines dropped (inside continuations too), the escape character at the
//! end of a line joining it with the next, heredocs read after their instruction's line.

use crate::{Dockerfile, Error, Heredoc, Instruction, KEYWORDS};

/// Instructions whose arguments may name heredocs.
const HEREDOC_KEYWORDS: &[&str] = &["RUN", "COPY", "ADD"];

/// Largest Dockerfile accepted (dockerd has no limit; a build context of this size is absurd).
pub const MAX_LEN: usize = 4 << 20;

/// A `# key=value` parser directive.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix('#')?;
    let (k, v) = rest.split_once('=')?;
    let k = k.trim();
    if k.is_empty()
        || !k.starts_with(|c: char| c.is_ascii_alphabetic())
        || !k.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    Some((k.to_ascii_lowercase(), v.trim().to_string()))
}

/// The line without its continuation marker, if it ends with the escape character (maybe
/// followed by blanks).
fn continued(line: &str, escape: char) -> Option<&str> {
    let t = line.trim_end_matches([' ', '\t']);
    t.strip_suffix(escape)
}

/// The heredoc markers in an instruction's arguments: (name, strip tabs, expand).
fn heredoc_markers(args: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let b: Vec<char> = args.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        // `<<<` is a here-string, not a heredoc.
        if c == '<' && b.get(i + 1) == Some(&'<') && b.get(i + 2) == Some(&'<') {
            while b.get(i) == Some(&'<') {
                i += 1;
            }
            continue;
        }
        if c == '<' && b.get(i + 1) == Some(&'<') {
            let mut j = i + 2;
            let strip = b.get(j) == Some(&'-');
            if strip {
                j += 1;
            }
            let q = match b.get(j) {
                Some(&c @ ('"' | '\'')) => {
                    j += 1;
                    Some(c)
                }
                _ => None,
            };
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == '_') {
                j += 1;
            }
            let name: String = b[start..j].iter().collect();
            let closed = match q {
                Some(qc) => b.get(j) == Some(&qc),
                None => true,
            };
            if !name.is_empty() && closed && !name.starts_with(|c: char| c.is_ascii_digit()) {
                out.push((name, strip, q.is_none()));
                i = j + usize::from(q.is_some());
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Splits `--flag[=value]` words off the front of the arguments.
fn split_flags(args: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let end = after.find([' ', '\t']).unwrap_or(after.len());
        let word = &after[..end];
        if word.is_empty() {
            // A bare `--` ends the flags.
            rest = after[end..].trim_start();
            break;
        }
        match word.split_once('=') {
            Some((n, v)) => flags.push((n.to_ascii_lowercase(), Some(v.to_string()))),
            None => flags.push((word.to_ascii_lowercase(), None)),
        }
        rest = after[end..].trim_start();
    }
    (flags, rest)
}

/// Parses a Dockerfile. Errors name their line.
pub fn parse(text: &str) -> Result<Dockerfile, Error> {
    if text.len() > MAX_LEN {
        return Err(Error::new(
            0,
            format!("the Dockerfile is larger than {MAX_LEN} bytes"),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut escape = '\\';
    let mut syntax = None;
    let mut seen_escape = false;
    let mut n = 0;
    // Directives: only at the very top, before any other line.
    while n < lines.len() {
        let Some((k, v)) = directive(lines[n]) else {
            break;
        };
        match k.as_str() {
            "escape" => {
                if seen_escape {
                    return Err(Error::new(
                        n + 1,
                        "only one escape parser directive can be used",
                    ));
                }
                seen_escape = true;
                escape = match v.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(Error::new(
                            n + 1,
                            format!("invalid escape token '{v}' does not match ` or \\"),
                        ))
                    }
                };
            }
            "syntax" => syntax = Some(v),
            // Unknown directives (`check`, ...) are comments to the classic builder.
            _ => {}
        }
        n += 1;
    }
    let mut instructions = Vec::new();
    while n < lines.len() {
        let first = lines[n].trim_start();
        n += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let line_no = n;
        let mut joined = String::new();
        let mut cur = first;
        loop {
            match continued(cur, escape) {
                Some(head) => {
                    joined.push_str(head);
                    // The next line that is not a comment or blank continues this one.
                    let mut next = None;
                    while n < lines.len() {
                        let l = lines[n];
                        n += 1;
                        let t = l.trim_start();
                        if t.starts_with('#') || t.is_empty() {
                            continue;
                        }
                        next = Some(l);
                        break;
                    }
                    match next {
                        Some(l) => cur = l,
                        None => break,
                    }
                }
                None => {
                    joined.push_str(cur);
                    break;
                }
            }
        }
        let joined = joined.trim();
        let (kw, rest) = match joined.find([' ', '\t']) {
            Some(i) => (&joined[..i], joined[i..].trim_start()),
            None => (joined, ""),
        };
        let keyword = kw.to_ascii_uppercase();
        if !KEYWORDS.contains(&keyword.as_str()) {
            return Err(Error::new(line_no, format!("unknown instruction: {kw}")));
        }
        let (flags, args) = split_flags(rest);
        let args = args.trim().to_string();
        let mut heredocs = Vec::new();
        if HEREDOC_KEYWORDS.contains(&keyword.as_str()) {
            for (name, strip, expand) in heredoc_markers(&args) {
                let mut content = String::new();
                let mut done = false;
                while n < lines.len() {
                    let l = lines[n];
                    n += 1;
                    let l = if strip { l.trim_start_matches('\t') } else { l };
                    if l == name {
                        done = true;
                        break;
                    }
                    content.push_str(l);
                    content.push('\n');
                }
                if !done {
                    return Err(Error::new(
                        line_no,
                        format!("unterminated heredoc {name:?}: no line {name:?} ends it"),
                    ));
                }
                heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                });
            }
        }
        let mut original = keyword.clone();
        for (f, v) in &flags {
            original.push_str(" --");
            original.push_str(f);
            if let Some(v) = v {
                original.push('=');
                original.push_str(v);
            }
        }
        if !args.is_empty() {
            original.push(' ');
            original.push_str(&args);
        }
        instructions.push(Instruction {
            line: line_no,
            keyword,
            flags,
            args,
            heredocs,
            original,
        });
    }
    Ok(Dockerfile {
        escape,
        syntax,
        instructions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(df: &Dockerfile) -> Vec<(&str, &str)> {
        df.instructions
            .iter()
            .map(|i| (i.keyword.as_str(), i.args.as_str()))
            .collect()
    }

    #[test]
    fn instructions_comments_and_blank_lines() {
        let df =
            parse("# a comment\n\nFROM busybox\n  run echo hi   \n\n# x\nCMD [\"sh\"]\n").unwrap();
        assert_eq!(
            kw(&df),
            vec![("FROM", "busybox"), ("RUN", "echo hi"), ("CMD", "[\"sh\"]")]
        );
        assert_eq!(df.instructions[1].line, 4);
        assert_eq!(df.instructions[2].original, "CMD [\"sh\"]");
        assert_eq!(df.escape, '\\');
    }

    #[test]
    fn continuations_skip_comments_and_blanks() {
        let df =
            parse("FROM a\nRUN echo a \\\n# inside\n\n  && echo b \\  \n  c\nENV x=1\n").unwrap();
        assert_eq!(df.instructions[1].args, "echo a   && echo b   c");
        assert_eq!(df.instructions[1].line, 2);
        assert_eq!(df.instructions[2].line, 7);
        // A continuation at the end of the file ends the instruction.
        let df = parse("FROM a\nRUN echo \\").unwrap();
        assert_eq!(df.instructions[1].args, "echo");
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse("\u{feff}FROM a\r\nRUN x \\\r\n y\r\n").unwrap();
        assert_eq!(kw(&df), vec![("FROM", "a"), ("RUN", "x  y")]);
    }

    #[test]
    fn directives_only_at_the_top() {
        let df =
            parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN dir `\n c:\\\n").unwrap();
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.instructions[1].args, "dir  c:\\");
        // After a blank line or a comment, `# escape=` is a comment.
        let df = parse("\n# escape=`\nFROM a\nRUN x \\\n y\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert_eq!(df.instructions[1].args, "x  y");
        let df = parse("# hello\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.escape, '\\');
        assert!(parse("# escape=`\n# escape=\\\nFROM a").is_err());
        let e = parse("# escape=x\nFROM a").unwrap_err();
        assert!(e.message.contains("invalid escape"), "{e}");
        // Directive keys are case-insensitive, with blanks around the `=`.
        assert_eq!(parse("#ESCAPE = `\nFROM a").unwrap().escape, '`');
    }

    #[test]
    fn flags_are_split_off() {
        let df =
            parse("FROM --platform=linux/amd64 a AS b\nCOPY --from=b --chown=1:2 x y\n").unwrap();
        let c = &df.instructions[1];
        assert_eq!(c.flag("from"), Some("b"));
        assert_eq!(c.flag("chown"), Some("1:2"));
        assert_eq!(c.args, "x y");
        assert_eq!(c.original, "COPY --from=b --chown=1:2 x y");
        assert_eq!(df.instructions[0].flag("platform"), Some("linux/amd64"));
        let df = parse("FROM a\nRUN --network=none -- --weird\n").unwrap();
        assert_eq!(df.instructions[1].flag("network"), Some("none"));
        assert_eq!(df.instructions[1].args, "--weird");
    }

    #[test]
    fn unknown_instruction_names_its_line() {
        let e = parse("FROM a\n\nFOO bar\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "dockerfile parse error on line 3: unknown instruction: FOO"
        );
    }

    #[test]
    fn heredocs() {
        let df = parse(concat!(
            "FROM a\nRUN <<EOF\necho hi\n  echo there\nEOF\n",
            "COPY <<-\"X\" <<Y /dst/\n\t$a\nX\nb\nY\nCMD c\n"
        ))
        .unwrap();
        let r = &df.instructions[1];
        assert_eq!(r.args, "<<EOF");
        assert_eq!(r.heredocs.len(), 1);
        assert_eq!(r.heredocs[0].content, "echo hi\n  echo there\n");
        assert!(r.heredocs[0].expand);
        let c = &df.instructions[2];
        assert_eq!(c.heredocs.len(), 2);
        assert_eq!(c.heredocs[0].name, "X");
        assert_eq!(c.heredocs[0].content, "$a\n");
        assert!(!c.heredocs[0].expand);
        assert_eq!(c.heredocs[1].content, "b\n");
        assert_eq!(df.instructions[3].keyword, "CMD");
        assert!(parse("FROM a\nRUN <<EOF\nnever ends\n").is_err());
        // Not heredocs: a here-string, a quoted `<<`, and other instructions.
        let df = parse("FROM a\nRUN cat <<<x '<<Y'\nLABEL a=<<Z\n").unwrap();
        assert!(df.instructions[1].heredocs.is_empty());
        assert!(df.instructions[2].heredocs.is_empty());
    }

    #[test]
    fn stages_and_meta_args() {
        let df = parse("ARG V=1\nFROM a:$V AS Build\nRUN x\nFROM scratch\nCOPY --from=build / /\n")
            .unwrap();
        let (meta, st) = crate::stages(&df).unwrap();
        assert_eq!(meta.len(), 1);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].name.as_deref(), Some("build"));
        assert_eq!(st[0].instructions.len(), 1);
        assert_eq!(st[1].name, None);
        assert!(crate::stages(&parse("RUN x\nFROM a").unwrap()).is_err());
        assert!(crate::stages(&parse("ARG x").unwrap()).is_err());
        assert!(crate::stages(&parse("FROM a AS x\nFROM b AS X").unwrap()).is_err());
    }

    #[test]
    fn no_panic_on_odd_input() {
        for t in [
            "",
            "\\",
            "FROM",
            "RUN <<",
            "RUN <<-",
            "RUN <<'",
            "RUN <<\"E",
            "#",
            "# =",
            "\r",
            "FROM a\nRUN \\\n\\\n\\",
            "FROM a\nRUN --",
            "COPY --=x a b",
            "RUN ü\u{1}\\",
        ] {
            let _ = parse(t);
        }
    }
}
