//! The Dockerfile parser, the typed instructions and the variable lexer (crates/dockerfile) on
//! hostile text: a build context's Dockerfile comes from the client. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let env: BTreeMap<String, String> = [("A", "a"), ("E", ""), ("P", "/x y")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = dockerfile::lex::word(&text, &env, '\\');
    let _ = dockerfile::lex::words(&text, &env, '`');
    let Ok(df) = dockerfile::parse(&text) else {
        return;
    };
    let _ = dockerfile::stages(&df);
    for i in &df.instructions {
        let _ = dockerfile::command::command(i, &env, df.escape);
    }
});
