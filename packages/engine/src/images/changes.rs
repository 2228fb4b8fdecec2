//! `--change` for `docker commit` and `docker import`: the Dockerfile instructions dockerd
//! allows there (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME, STOPSIGNAL,
//! ONBUILD), applied to an image config's `config` object (JSON, so fields this engine does
//! not model, such as Healthcheck, survive).

use serde_json::{json, Map, Value};

/// Applies each instruction in order; Err names the one refused.
pub fn apply(config: &mut Map<String, Value>, changes: &[String]) -> Result<(), String> {
    for c in changes {
        // The CLI sends one instruction per value; a value may also hold several lines.
        for line in c.lines().map(str::trim).filter(|l| !l.is_empty()) {
            apply_one(config, line)?;
        }
    }
    Ok(())
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// `["a","b"]` (exec form) or a shell command.
fn exec_or_shell(args: &str) -> Vec<String> {
    if args.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(args) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), args.into()]
}

/// `k=v k2="v 2"` pairs (quotes removed).
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut toks = Vec::new();
    let mut quote = None;
    for ch in s.chars() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    toks.push(std::mem::take(&mut cur));
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        toks.push(cur);
    }
    for t in toks {
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("{t:?} is not KEY=VALUE"))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn apply_one(config: &mut Map<String, Value>, line: &str) -> Result<(), String> {
    let (ins, args) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let args = args.trim();
    let ins = ins.to_ascii_uppercase();
    let need = |a: &str| {
        if a.is_empty() {
            Err(format!("{ins} requires at least one argument"))
        } else {
            Ok(())
        }
    };
    match ins.as_str() {
        "CMD" => {
            need(args)?;
            config.insert("Cmd".into(), json!(exec_or_shell(args)));
        }
        "ENTRYPOINT" => {
            need(args)?;
            config.insert("Entrypoint".into(), json!(exec_or_shell(args)));
        }
        "ENV" => {
            need(args)?;
            // `ENV k v` (one pair, the rest is the value) or `ENV k=v k2=v2`.
            let kv = match args.split_once(char::is_whitespace) {
                Some((k, v)) if !k.contains('=') => vec![(k.to_string(), v.trim().to_string())],
                _ => pairs(args)?,
            };
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            for (k, v) in kv {
                let prefix = format!("{k}=");
                env.retain(|e| !e.starts_with(&prefix) && e != &k);
                env.push(format!("{k}={v}"));
            }
            config.insert("Env".into(), json!(env));
        }
        "EXPOSE" => {
            need(args)?;
            let ports = config.entry("ExposedPorts").or_insert_with(|| json!({}));
            if !ports.is_object() {
                *ports = json!({});
            }
            for p in words(args) {
                let p = if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                };
                let (num, _) = p.split_once('/').unwrap_or((&p, ""));
                if num.split('-').any(|n| n.parse::<u16>().is_err()) {
                    return Err(format!("invalid port {p:?}"));
                }
                ports
                    .as_object_mut()
                    .expect("made an object above")
                    .insert(p, json!({}));
            }
        }
        "LABEL" => {
            need(args)?;
            let labels = config.entry("Labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            let kv = match args.split_once(char::is_whitespace) {
                Some((k, v)) if !k.contains('=') => vec![(k.to_string(), v.trim().to_string())],
                _ => pairs(args)?,
            };
            for (k, v) in kv {
                labels
                    .as_object_mut()
                    .expect("made an object above")
                    .insert(k, json!(v));
            }
        }
        "USER" => {
            need(args)?;
            config.insert("User".into(), json!(args));
        }
        "WORKDIR" => {
            need(args)?;
            let cur = config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_string();
            let wd = if args.starts_with('/') {
                args.to_string()
            } else {
                format!("{}/{args}", cur.trim_end_matches('/'))
            };
            config.insert("WorkingDir".into(), json!(wd));
        }
        "VOLUME" => {
            need(args)?;
            let vols = config.entry("Volumes").or_insert_with(|| json!({}));
            if !vols.is_object() {
                *vols = json!({});
            }
            let list = if args.starts_with('[') {
                serde_json::from_str::<Vec<String>>(args).map_err(|e| format!("VOLUME: {e}"))?
            } else {
                words(args)
            };
            for v in list {
                vols.as_object_mut()
                    .expect("made an object above")
                    .insert(v, json!({}));
            }
        }
        "STOPSIGNAL" => {
            need(args)?;
            config.insert("StopSignal".into(), json!(args));
        }
        "ONBUILD" => {
            need(args)?;
            let on = config.entry("OnBuild").or_insert_with(|| json!([]));
            if !on.is_array() {
                *on = json!([]);
            }
            on.as_array_mut()
                .expect("made an array above")
                .push(json!(args));
        }
        other => return Err(format!("{other} is not a valid change command")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(changes: &[&str]) -> Result<Value, String> {
        let mut m = Map::new();
        m.insert("Env".into(), json!(["PATH=/bin", "A=0"]));
        let c: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply(&mut m, &c)?;
        Ok(Value::Object(m))
    }

    #[test]
    fn every_allowed_instruction() {
        let v = run(&[
            r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /start --now",
            "ENV A=1 B=\"two words\"",
            "ENV C three four",
            "EXPOSE 80 53/udp",
            "LABEL a=b \"c\"=\"d e\"",
            "USER nobody",
            "WORKDIR /srv",
            "WORKDIR app",
            "VOLUME /data /logs",
            "STOPSIGNAL SIGINT",
        ])
        .unwrap();
        assert_eq!(v["Cmd"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(v["Entrypoint"], json!(["/bin/sh", "-c", "/start --now"]));
        assert_eq!(
            v["Env"],
            json!(["PATH=/bin", "A=1", "B=two words", "C=three four"])
        );
        assert_eq!(v["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(v["Labels"], json!({"a": "b", "c": "d e"}));
        assert_eq!(v["User"], json!("nobody"));
        assert_eq!(v["WorkingDir"], json!("/srv/app"));
        assert_eq!(v["Volumes"], json!({"/data": {}, "/logs": {}}));
        assert_eq!(v["StopSignal"], json!("SIGINT"));
    }

    #[test]
    fn refused() {
        assert!(run(&["RUN rm -rf /"])
            .unwrap_err()
            .contains("not a valid change"));
        assert!(run(&["FROM scratch"]).is_err());
        assert!(run(&["EXPOSE http"]).is_err());
        assert!(run(&["CMD"]).is_err());
    }
}
