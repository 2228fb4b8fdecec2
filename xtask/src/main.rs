//! `cargo xtask`: the command line of axion's build tool. It only parses flags, goes to the
//! checkout's root and hands each subcommand to its module in the library; each module's
//! `Args` is both its flags and the options it takes.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use xtask::layout::{self, Layout};
use xtask::{
    bench, build, compat, doctor, fetch, fuzz, image, profile, publish, run, test, verify, vmd,
};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, run and test axion images",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List recipes and image profiles with their versions and licenses.
    List,
    /// Fetch and verify sources into the download cache.
    Fetch(fetch::Args),
    /// Check the host for every tool the project needs.
    Doctor(doctor::Args),
    /// Build packages into staged trees (default: every package of the default profile).
    Build(build::Args),
    /// Assemble an image.
    Image(image::Args),
    /// Boot an image in QEMU with the serial console on this terminal.
    Run(run::Args),
    /// Build a profile's images and write them with SHA256SUMS, an SPDX SBOM, license texts
    /// and a build manifest into a folder; optionally push them to an OCI registry.
    Publish(publish::Args),
    /// Get artifacts pushed by `publish --push` back from a registry, verified.
    Pull(publish::PullArgs),
    /// Rebuild a published folder from the inputs its build manifest records and compare
    /// every file with its SHA256SUMS: identical, or which files and bytes differ.
    Verify(verify::Args),
    /// Make a key pair for `publish --sign-key` (PREFIX.key, PREFIX.pub).
    Keygen(publish::sign::KeygenArgs),
    /// Power off a VM started with `run --detach`, through the ACPI power button.
    Stop(run::StopArgs),
    /// Build the cargo-fuzz targets in fuzz/ and run them (every target, or one); a crash
    /// fails with its input saved under fuzz/artifacts/.
    Fuzz(fuzz::Args),
    /// The gate: cargo fmt --check, clippy -D warnings, unit tests, then end-to-end tests that
    /// boot images in QEMU; ends with `N passed, N failed, N skipped`.
    Test(test::Args),
    /// Measure build, size, boot and container figures against a Debian peer and the kernel
    /// floor; a table on stdout and in docs/benchmarks.md, JSON and an SVG chart under
    /// out/bench/.
    Bench(bench::Args),
    /// Serve a Docker endpoint on the host where every container runs in its own VM cloned
    /// from a saved template (host/vmd); prints `export DOCKER_HOST=...`.
    Vmd(vmd::Args),
    /// Run docker-py's integration suite against the engine in a booted image; a per-file
    /// pass/fail table (docs/compat.md).
    Compat(compat::Args),
    /// Remove build outputs (`out/`); `--cache` also empties the download and build cache.
    Clean(layout::CleanArgs),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<()> {
    let layout = Layout::discover();
    std::env::set_current_dir(&layout.root)
        .with_context(|| format!("cannot enter {}", layout.root.display()))?;
    match cmd {
        Cmd::List => profile::list(&layout),
        Cmd::Doctor(a) => doctor::main(&layout, &a),
        Cmd::Fetch(a) => fetch::main(&layout, &a),
        Cmd::Build(a) => build::main(&layout, &a),
        Cmd::Image(a) => image::main(&layout, &a),
        Cmd::Run(a) => run::run(&layout, &a),
        Cmd::Publish(a) => publish::main(&layout, &a),
        Cmd::Pull(a) => publish::pull(&a),
        Cmd::Verify(a) => verify::main(&layout, &a),
        Cmd::Keygen(a) => publish::sign::keygen(&a),
        Cmd::Stop(a) => run::stop(&layout, &a.profile),
        Cmd::Fuzz(a) => fuzz::main(&layout, &a),
        Cmd::Test(a) => test::main(&layout, &a),
        Cmd::Bench(a) => bench::bench(&layout, &a),
        Cmd::Vmd(a) => vmd::vmd(&layout, &a),
        Cmd::Compat(a) => compat::compat(&layout, &a),
        Cmd::Clean(a) => layout::clean(&layout, &a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_reach_the_modules_args() {
        let Cmd::Run(a) = Cli::parse_from(["x", "run", "--detach", "--ssh-port", "2200"]).command
        else {
            panic!("not run")
        };
        assert!(a.detach && a.ssh_port == Some(2200) && a.profile == "qemu");
        let Cmd::Vmd(a) = Cli::parse_from([
            "x",
            "vmd",
            "--insecure-registry",
            "a:5000",
            "--insecure-registry",
            "10.0.0.0/8",
        ])
        .command
        else {
            panic!("not vmd")
        };
        assert_eq!(a.insecure_registries, ["a:5000", "10.0.0.0/8"]);
        let Cmd::Image(a) = Cli::parse_from(["x", "image", "--format", "raw,qcow2"]).command else {
            panic!("not image")
        };
        assert_eq!(a.format.len(), 2);
        let Cmd::Test(a) = Cli::parse_from(["x", "test", "--unit", "some_filter"]).command else {
            panic!("not test")
        };
        assert!(a.unit && a.args == ["some_filter"]);
    }
}
