//! Variable substitution and word splitting as the builder's shell lexer does them: `$V` and
//! `${V}`, the modifiers `:-` `-` `:+` `+` `:?` `?`, single quotes (literal), double quotes
//! (expanding), and the escape character. Unset variables expand to nothing.

use std::collections::{BTreeMap, HashMap};

/// Where variables are looked up.
pub trait Lookup {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// `NAME=value` entries, the last one of a name winning (an image's `Env`).
impl Lookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// No variables at all.
pub struct Empty;

impl Lookup for Empty {
    fn lookup(&self, _: &str) -> Option<&str> {
        None
    }
}

/// Deepest `${a:-${b:-...}}` nesting followed; deeper is an error, not a stack overflow.
const MAX_DEPTH: usize = 64;

struct Lexer<'a, L: Lookup + ?Sized> {
    s: Vec<char>,
    pos: usize,
    env: &'a L,
    escape: char,
}

#[derive(Default)]
struct Out {
    words: Vec<String>,
    cur: String,
    in_word: bool,
}

impl Out {
    fn push(&mut self, c: char) {
        self.cur.push(c);
        self.in_word = true;
    }
    fn push_str(&mut self, s: &str) {
        self.cur.push_str(s);
        self.in_word = true;
    }
    fn end_word(&mut self) {
        if self.in_word {
            self.words.push(std::mem::take(&mut self.cur));
        }
        self.in_word = false;
    }
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl<L: Lookup + ?Sized> Lexer<'_, L> {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    /// Reads until `stop` (consumed) or the end; splits words on blanks when `split`.
    fn run(
        &mut self,
        out: &mut Out,
        stop: Option<char>,
        split: bool,
        depth: usize,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("substitutions nested too deeply".into());
        }
        while let Some(c) = self.next() {
            if Some(c) == stop {
                return Ok(());
            }
            if c == self.escape {
                match self.next() {
                    Some(n) => out.push(n),
                    None => break,
                }
            } else if c == '\'' {
                out.in_word = true;
                loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(n) => out.push(n),
                        None => {
                            return Err("unexpected end of statement while looking for \
                                        matching single-quote"
                                .into())
                        }
                    }
                }
            } else if c == '"' {
                out.in_word = true;
                self.double_quoted(out, depth)?;
            } else if c == '$' {
                let v = self.dollar(depth)?;
                if !v.is_empty() {
                    out.push_str(&v);
                }
            } else if split && (c == ' ' || c == '\t' || c == '\n') {
                out.end_word();
            } else {
                out.push(c);
            }
        }
        match stop {
            Some(s) => Err(format!("missing '{s}' in substitution")),
            None => Ok(()),
        }
    }

    fn double_quoted(&mut self, out: &mut Out, depth: usize) -> Result<(), String> {
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => return Ok(()),
                Some('$') => {
                    let v = self.dollar(depth)?;
                    out.push_str(&v);
                }
                Some(c) if c == self.escape => match self.peek() {
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        self.pos += 1;
                        out.push(n);
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// After a `$`: the expansion (a lone `$` stays itself).
    fn dollar(&mut self, depth: usize) -> Result<String, String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                let start = self.pos;
                while self.peek().is_some_and(is_name) {
                    self.pos += 1;
                }
                let name: String = self.s[start..self.pos].iter().collect();
                if name.is_empty() {
                    return Err("bad substitution: a name must follow ${".into());
                }
                let value = self.env.lookup(&name).map(str::to_string);
                let c = self.next().ok_or("missing '}' in substitution")?;
                if c == '}' {
                    return Ok(value.unwrap_or_default());
                }
                let (colon, m) = if c == ':' {
                    (true, self.next().ok_or("missing '}' in substitution")?)
                } else {
                    (false, c)
                };
                if !matches!(m, '-' | '+' | '?') {
                    return Err(format!(
                        "unsupported modifier ({}{m}) in substitution of ${{{name}}}",
                        if colon { ":" } else { "" }
                    ));
                }
                let mut w = Out::default();
                self.run(&mut w, Some('}'), false, depth + 1)?;
                let word = w.cur;
                let set = value.is_some();
                let nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
                let present = if colon { nonempty } else { set };
                Ok(match m {
                    '-' if present => value.unwrap_or_default(),
                    '-' => word,
                    '+' if present => word,
                    '+' => String::new(),
                    _ if present => value.unwrap_or_default(),
                    _ => {
                        return Err(if word.is_empty() {
                            format!("{name}: is not allowed to be unset")
                        } else {
                            format!("{name}: {word}")
                        })
                    }
                })
            }
            Some(c) if is_name(c) => {
                let start = self.pos;
                while self.peek().is_some_and(is_name) {
                    self.pos += 1;
                }
                let name: String = self.s[start..self.pos].iter().collect();
                Ok(self.env.lookup(&name).unwrap_or_default().to_string())
            }
            _ => Ok("$".into()),
        }
    }
}

/// One word with its variables expanded and quotes removed (blanks kept): `WORKDIR`, `USER`.
pub fn word<L: Lookup + ?Sized>(s: &str, env: &L, escape: char) -> Result<String, String> {
    let mut lx = Lexer {
        s: s.chars().collect(),
        pos: 0,
        env,
        escape,
    };
    let mut out = Out::default();
    lx.run(&mut out, None, false, 0)?;
    Ok(out.cur)
}

/// Expanded words, split on unquoted blanks: `EXPOSE`, `COPY` sources, `VOLUME`.
pub fn words<L: Lookup + ?Sized>(s: &str, env: &L, escape: char) -> Result<Vec<String>, String> {
    let mut lx = Lexer {
        s: s.chars().collect(),
        pos: 0,
        env,
        escape,
    };
    let mut out = Out::default();
    lx.run(&mut out, None, true, 0)?;
    out.end_word();
    Ok(out.words)
}

/// Splits on blanks outside quotes without expanding, keeping quotes and escapes as written
/// (for `k=v` lists: each word is expanded afterwards).
pub fn split_raw(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            cur.push(c);
            if let Some(n) = chars.next() {
                cur.push(n);
            }
            continue;
        }
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "a"), ("E", ""), ("P", "/usr/bin"), ("S", "x y")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(s: &str) -> String {
        word(s, &env(), '\\').unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(w("$A"), "a");
        assert_eq!(w("${A}b"), "ab");
        assert_eq!(w("$Ab"), "");
        assert_eq!(w("pre-$P/x"), "pre-/usr/bin/x");
        assert_eq!(w("$UNSET."), ".");
        assert_eq!(w("$"), "$");
        assert_eq!(w("a$ b$-"), "a$ b$-");
        assert_eq!(w("100%$"), "100%$");
    }

    #[test]
    fn modifiers() {
        assert_eq!(w("${A:-d}"), "a");
        assert_eq!(w("${E:-d}"), "d");
        assert_eq!(w("${U:-d}"), "d");
        assert_eq!(w("${E-d}"), "");
        assert_eq!(w("${U-d}"), "d");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${E:+alt}"), "");
        assert_eq!(w("${E+alt}"), "alt");
        assert_eq!(w("${U+alt}"), "");
        assert_eq!(w("${U:-$A/${P}}"), "a//usr/bin");
        assert_eq!(w("${U:-${E:-deep}}"), "deep");
        assert_eq!(w("${U:-a b}"), "a b");
        assert_eq!(w("${A:?}"), "a");
        let e = word("${U:?must be set}", &env(), '\\').unwrap_err();
        assert_eq!(e, "U: must be set");
        assert!(word("${E:?}", &env(), '\\').is_err());
        assert_eq!(w("${E?}"), "");
        assert!(word("${A%x}", &env(), '\\').is_err());
        assert!(word("${}", &env(), '\\').is_err());
        assert!(word("${A", &env(), '\\').is_err());
        assert!(word("${A:-x", &env(), '\\').is_err());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A b\""), "a b");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(w("\"\\$A\""), "$A");
        assert_eq!(w("\"a\\b\""), "a\\b");
        assert_eq!(w("\"q\\\"q\""), "q\"q");
        assert_eq!(w("a\\ b"), "a b");
        assert_eq!(w("x\\"), "x");
        assert!(word("'open", &env(), '\\').is_err());
        assert!(word("\"open", &env(), '\\').is_err());
        // With the backtick as escape, a backslash is an ordinary character.
        assert_eq!(word("c:\\dir `$A", &env(), '`').unwrap(), "c:\\dir $A");
    }

    #[test]
    fn word_splitting() {
        let ws = |s: &str| words(s, &env(), '\\').unwrap();
        assert_eq!(ws("80  443/udp\t$A"), vec!["80", "443/udp", "a"]);
        assert_eq!(ws("\"a b\" c"), vec!["a b", "c"]);
        assert_eq!(ws("'' x"), vec!["", "x"]);
        assert_eq!(ws("$E x"), vec!["x"]);
        // An expansion is not split again.
        assert_eq!(ws("$S"), vec!["x y"]);
        assert!(ws("").is_empty());
    }

    #[test]
    fn raw_split_keeps_quotes() {
        assert_eq!(
            split_raw("a=\"x y\" b='1 2' c=\\ d", '\\'),
            vec!["a=\"x y\"", "b='1 2'", "c=\\ d"]
        );
        assert_eq!(split_raw("  ", '\\'), Vec::<String>::new());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let s = "${U:-".repeat(10_000) + &"}".repeat(10_000);
        assert!(word(&s, &env(), '\\').is_err());
    }

    #[test]
    fn image_env_lookup() {
        let e: Vec<(String, String)> = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        assert_eq!(word("$A", &e[..], '\\').unwrap(), "2");
        assert_eq!(word("$A", &Empty, '\\').unwrap(), "");
    }
}
