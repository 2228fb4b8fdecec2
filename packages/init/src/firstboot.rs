//! Applying the settings that are more than values: `write_files`, `runcmd` and `ntp`.
//!
//! - `write_files` are written on **every** boot, before any service starts (the root
//!   filesystem is rebuilt from the image at each boot, so a file in /etc would not survive
//!   otherwise), in merge order: parents created (0755), written to a temporary name and
//!   renamed, mode set, owner root. `append: true` entries append only on the first boot
//!   of an instance, so a reboot does not append twice.
//! - `runcmd` runs once per instance, right after the ready line, as the one-shot service
//!   `runcmd` (`/bin/sh /run/axion/runcmd.sh`; output on the console and in
//!   /var/log/runcmd.log). `/var/lib/axion/runcmd-done` records the instance it ran for.
//! - `ntp` servers start busybox `ntpd -n -p SERVER...` as the service `ntpd`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::services::{Restart, Service};
use crate::settings::{RunCmd, WriteFile};

pub const RUNCMD_SCRIPT: &str = "/run/axion/runcmd.sh";
pub const RUNCMD_DONE: &str = "/var/lib/axion/runcmd-done";

fn write_one(f: &WriteFile, first_boot: bool) -> std::io::Result<bool> {
    let path = Path::new(&f.path);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    if f.append {
        if !first_boot {
            return Ok(false);
        }
        let mut h = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        h.write_all(&f.content)?;
        h.set_permissions(fs::Permissions::from_mode(f.mode))?;
        return Ok(true);
    }
    let tmp = path.with_file_name(format!(
        ".{}.axion-new",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut h = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    h.set_permissions(fs::Permissions::from_mode(f.mode))?;
    h.write_all(&f.content)?;
    h.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

/// Writes the files; returns how many were written.
pub fn write_files(files: &[WriteFile], first_boot: bool) -> usize {
    let mut n = 0;
    for f in files {
        match write_one(f, first_boot) {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(e) => crate::log::line(&format!(
                "axion: settings: {}: write_files {}: {e} (not written)",
                f.source, f.path
            )),
        }
    }
    n
}

/// Quotes one word for /bin/sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script for `runcmd`: one line per entry, run in order; a failing command does not
/// stop the later ones (like cloud-init, which runs them in one script without `set -e`).
pub fn runcmd_script(cmds: &[RunCmd]) -> String {
    let mut s =
        String::from("#!/bin/sh\n# runcmd from the first-boot settings, written by axion init\n");
    for c in cmds {
        match c {
            RunCmd::Shell(line) => s.push_str(line),
            RunCmd::Argv(argv) => s.push_str(
                &argv
                    .iter()
                    .map(|a| sh_quote(a))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        }
        s.push('\n');
    }
    s
}

/// The one-shot `runcmd` service, when there is something to run for this instance.
pub fn runcmd_service(cmds: &[RunCmd], instance_id: &str) -> Option<Service> {
    if cmds.is_empty() {
        return None;
    }
    if fs::read_to_string(RUNCMD_DONE).is_ok_and(|s| s.trim() == instance_id) {
        crate::info!("runcmd already ran for instance {instance_id}; not again");
        return None;
    }
    let res = fs::create_dir_all("/run/axion")
        .and_then(|()| fs::write(RUNCMD_SCRIPT, runcmd_script(cmds)))
        .and_then(|()| fs::write(RUNCMD_DONE, format!("{instance_id}\n")));
    if let Err(e) = res {
        crate::error!("runcmd: write {RUNCMD_SCRIPT} or {RUNCMD_DONE}: {e}; not run");
        return None;
    }
    Some(one_shot(
        "runcmd",
        "/bin/sh",
        vec![RUNCMD_SCRIPT.into()],
        Vec::new(),
        Restart::Never,
    ))
}

/// busybox ntpd for the settings' servers.
pub fn ntpd_service(servers: &[String]) -> Option<Service> {
    if servers.is_empty() {
        return None;
    }
    let mut args = vec!["ntpd".to_string(), "-n".into()];
    for s in servers {
        args.push("-p".into());
        args.push(s.clone());
    }
    Some(one_shot(
        "ntpd",
        "/bin/busybox",
        args,
        vec!["network".into()],
        Restart::Always,
    ))
}

fn one_shot(
    name: &str,
    command: &str,
    args: Vec<String>,
    after: Vec<String>,
    restart: Restart,
) -> Service {
    Service {
        name: name.into(),
        command: command.into(),
        args,
        environment: BTreeMap::new(),
        after,
        restart,
        working_directory: "/".into(),
        stop_timeout: Duration::from_secs(5),
        log_max_bytes: 1 << 20,
        ready: Vec::new(),
        ready_timeout: Duration::ZERO,
        tty: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_script() {
        assert_eq!(sh_quote("plain/path-1"), "plain/path-1");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(
            runcmd_script(&[
                RunCmd::Shell("echo a > /tmp/x".into()),
                RunCmd::Argv(vec!["touch".into(), "/tmp/a b".into()])
            ]),
            "#!/bin/sh\n# runcmd from the first-boot settings, written by axion init\necho a > \
             /tmp/x\ntouch '/tmp/a b'\n"
        );
    }

    #[test]
    fn writes_files_with_modes_and_appends_once() {
        let dir = std::env::temp_dir().join(format!("axion-wf-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let f = |name: &str, content: &str, mode: u32, append: bool| WriteFile {
            path: dir.join(name).to_string_lossy().into_owned(),
            content: content.as_bytes().to_vec(),
            mode,
            append,
            source: "test".into(),
        };
        let files = vec![
            f("a/b/c.txt", "one", 0o600, false),
            f("a/b/c.txt", "two", 0o640, false),
            f("log", "x\n", 0o644, true),
        ];
        assert_eq!(write_files(&files, true), 3);
        assert_eq!(fs::read_to_string(dir.join("a/b/c.txt")).unwrap(), "two");
        assert_eq!(
            fs::metadata(dir.join("a/b/c.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o640
        );
        assert_eq!(write_files(&files, false), 2);
        assert_eq!(fs::read_to_string(dir.join("log")).unwrap(), "x\n");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ntpd_arguments() {
        assert!(ntpd_service(&[]).is_none());
        let s = ntpd_service(&["a".into(), "b".into()]).unwrap();
        assert_eq!(s.args, ["ntpd", "-n", "-p", "a", "-p", "b"]);
        assert_eq!(s.after, ["network"]);
    }
}
