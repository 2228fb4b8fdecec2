//! `cargo xtask`: the command line of axion's build tool. It only parses flags and hands each
//! subcommand to its module in the library; the tasks never parse arguments themselves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use xtask::layout::Layout;
use xtask::profile::{self, Format};
use xtask::recipe::RecipeSet;
use xtask::{build, doctor, fetch, run};

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
    Fetch {
        /// Packages to fetch (default: all).
        packages: Vec<String>,
        /// Fetch the sources of every recipe.
        #[arg(long)]
        all: bool,
        /// Use only the cache; list exactly what is missing.
        #[arg(long)]
        offline: bool,
    },
    /// Check the host for every tool the project needs.
    Doctor,
    /// Build packages into staged trees (default: every package of the default profile).
    Build {
        packages: Vec<String>,
        #[arg(long)]
        offline: bool,
    },
    /// Assemble an image.
    Image {
        #[arg(long, default_value = "qemu")]
        profile: String,
        /// Formats to write (default: the profile's list).
        #[arg(long, value_delimiter = ',')]
        format: Vec<Format>,
        /// Output folder (default: out/PROFILE).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        offline: bool,
    },
    /// Boot an image in QEMU with the serial console on this terminal.
    Run {
        #[arg(long, default_value = "qemu")]
        profile: String,
        #[arg(long)]
        format: Option<Format>,
        /// Boot in the background, wait for the ready line, print `export` lines.
        #[arg(long)]
        detach: bool,
        /// Host port forwarded to the guest's SSH (default 2222, or a free one if busy).
        #[arg(long)]
        ssh_port: Option<u16>,
        /// Host port forwarded to the guest's Docker API (default 2376, or a free one if busy).
        #[arg(long)]
        docker_port: Option<u16>,
        /// SSH public key for root in the guest (default: ~/.ssh/id_ed25519.pub, id_ecdsa.pub
        /// or id_rsa.pub, the first that exists).
        #[arg(long)]
        ssh_key: Option<PathBuf>,
        /// Host name for the guest (a first-boot setting).
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Build a profile's images and write them with SHA256SUMS, an SPDX SBOM, license texts
    /// and a build manifest into a folder; optionally push them to an OCI registry.
    Publish {
        #[arg(long, default_value = "vsphere")]
        profile: String,
        /// The folder to write into.
        #[arg(long)]
        out: PathBuf,
        /// Also push everything as one OCI artifact: REGISTRY/REPOSITORY:TAG.
        #[arg(long)]
        push: Option<String>,
        #[arg(long)]
        offline: bool,
    },
    /// Get artifacts pushed by `publish --push` back from a registry, verified.
    Pull {
        /// REGISTRY/REPOSITORY:TAG
        reference: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Power off a VM started with `run --detach`, through the ACPI power button.
    Stop {
        #[arg(long, default_value = "qemu")]
        profile: String,
    },
    /// Run the test suite: unit tests, then end-to-end tests that boot images in QEMU.
    Test {
        /// Only the unit tests (no kernel build, no QEMU).
        #[arg(long)]
        unit: bool,
        /// Extra arguments for the test harness (a filter).
        args: Vec<String>,
    },
    /// Measure build, size, boot and container figures against a Debian peer and the kernel
    /// floor; a table on stdout and in docs/benchmarks.md, JSON and an SVG chart under
    /// out/bench/.
    Bench {
        /// Fewer runs; skip clean builds and the peer build when it is not cached.
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON (default out/bench/bench.json).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Only build (or find) the Debian peer, measure nothing.
        #[arg(long)]
        prepare: bool,
        /// Only the VM-per-container figures (clone against cold boot), printed and written
        /// to their section of docs/benchmarks.md.
        #[arg(long)]
        vmd_only: bool,
        /// Timed `docker run`s per mode (default 5, or 2 with --quick).
        #[arg(long, value_name = "N")]
        runs: Option<usize>,
    },
    /// Serve a Docker endpoint on the host where every container runs in its own VM cloned
    /// from a saved template (host/vmd); prints `export DOCKER_HOST=...`.
    Vmd {
        /// Run in the background; print the export line once it serves.
        #[arg(long)]
        detach: bool,
        /// Stop a detached daemon (and every VM it runs).
        #[arg(long)]
        stop: bool,
        /// Also serve TCP with mutual TLS on this loopback address (e.g. 127.0.0.1:2377);
        /// certificates are made in STATE/docker and exported as DOCKER_CERT_PATH.
        #[arg(long, value_name = "ADDR")]
        tcp: Option<String>,
        /// The daemon's state (template, clones, socket); default $AXION_CACHE/vmd.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Pull from this registry over plain HTTP (repeatable; passed on to axion-vmd).
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]|CIDR")]
        insecure_registries: Vec<String>,
    },
    /// Run docker-py's integration suite against the engine in a booted image; a per-file
    /// pass/fail table (docs/compat.md).
    Compat(xtask::compat::Args),
    /// Remove build outputs (`out/`); `--cache` also empties the download and build cache.
    Clean {
        #[arg(long)]
        cache: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let layout = Layout::discover();
    std::env::set_current_dir(&layout.root)
        .with_context(|| format!("cannot enter {}", layout.root.display()))?;
    match cli.command {
        Cmd::List => list(&layout),
        Cmd::Doctor => {
            if doctor::report() {
                Ok(())
            } else {
                bail!("some host tools are missing (see above)")
            }
        }
        Cmd::Fetch {
            packages,
            all,
            offline,
        } => {
            doctor::ensure(&[doctor::Need::Fetch])?;
            let recipes = RecipeSet::load(&layout.recipes())?;
            let names: Vec<String> = if all || packages.is_empty() {
                recipes.recipes.keys().cloned().collect()
            } else {
                packages
            };
            fetch::fetch_packages(
                &layout,
                &recipes,
                &names,
                fetch::Mode::from_offline(offline),
            )?;
            Ok(())
        }
        Cmd::Image {
            profile,
            format,
            out,
            offline,
        } => image(&layout, &profile, &format, out, offline),
        Cmd::Build { packages, offline } => {
            let recipes = RecipeSet::load(&layout.recipes())?;
            let names = if packages.is_empty() {
                profile::load_profile(&layout.root, "qemu", &recipes)?
                    .spec
                    .profile
                    .packages
            } else {
                packages
            };
            let opts = build::BuildOptions {
                offline,
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let staged = build::build_packages(&layout, &recipes, &names, &opts)?;
            eprintln!(
                "{} package(s) ready in {:.2} s under {}",
                staged.len(),
                started.elapsed().as_secs_f64(),
                layout.packages().display()
            );
            Ok(())
        }
        Cmd::Run {
            profile,
            format,
            detach,
            ssh_port,
            docker_port,
            ssh_key,
            hostname,
        } => run::run(
            &layout,
            &run::RunOptions {
                profile,
                format,
                detach,
                ssh_port,
                docker_port,
                ssh_key,
                hostname,
            },
        ),
        Cmd::Publish {
            profile,
            out,
            push,
            offline,
        } => publish(&layout, &profile, &out, push.as_deref(), offline),
        Cmd::Pull { reference, out } => {
            let files = xtask::publish::oci::pull(&reference, &out)?;
            let checked = xtask::publish::verify_sums(&out)?;
            eprintln!(
                "{} file(s) pulled into {}, {checked} checked against SHA256SUMS",
                files.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Stop { profile } => run::stop(&layout, &profile),
        Cmd::Test { unit, args } => test(&layout, unit, &args),
        Cmd::Bench {
            quick,
            json,
            prepare,
            vmd_only,
            runs,
        } => xtask::bench::bench(
            &layout,
            &xtask::bench::Options {
                quick,
                json,
                prepare,
                vmd_only,
                runs,
            },
        ),
        Cmd::Vmd {
            detach,
            stop,
            tcp,
            state_dir,
            insecure_registries,
        } => xtask::vmd::vmd(
            &layout,
            &xtask::vmd::Options {
                detach,
                stop,
                tcp,
                state_dir,
                insecure_registries,
            },
        ),
        Cmd::Compat(args) => xtask::compat::compat(&layout, &args),
        Cmd::Clean { cache } => {
            let out = layout.root.join("out");
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("cannot remove {}", out.display()))?;
            }
            if cache && layout.cache.exists() {
                std::fs::remove_dir_all(&layout.cache)
                    .with_context(|| format!("cannot remove {}", layout.cache.display()))?;
                eprintln!("removed {}", layout.cache.display());
            }
            Ok(())
        }
    }
}

/// `cargo xtask image`: the written files with their sizes.
fn image(
    layout: &Layout,
    name: &str,
    formats: &[Format],
    out: Option<PathBuf>,
    offline: bool,
) -> Result<()> {
    for path in xtask::image::build_profile(layout, name, formats, out, offline)? {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", human_size(size), path.display());
    }
    Ok(())
}

/// `cargo xtask publish`: the published files with their sizes, and the pushed digest.
fn publish(
    layout: &Layout,
    name: &str,
    dir: &std::path::Path,
    push: Option<&str>,
    offline: bool,
) -> Result<()> {
    let published = xtask::publish::publish_profile(layout, name, dir, push, offline)?;
    for f in &published.files {
        let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", human_size(size), f.display());
    }
    if let (Some(reference), Some(digest)) = (push, published.pushed) {
        println!("pushed {reference} ({digest})");
    }
    Ok(())
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn list(layout: &Layout) -> Result<()> {
    let recipes = RecipeSet::load(&layout.recipes())?;
    println!("Recipes:");
    for r in recipes.recipes.values() {
        let m = &r.spec.package;
        let kind = match &r.spec.build {
            xtask::recipe::Build::Kbuild(_) => "kbuild",
            xtask::recipe::Build::Make(_) => "make",
            xtask::recipe::Build::Cargo(_) => "cargo",
        };
        println!(
            "  {:12} {:16} {:7} {:28} {}",
            m.name, m.version, kind, m.license, m.summary
        );
    }
    println!("\nProfiles:");
    for (name, p) in profile::load_all(&layout.root, &recipes)? {
        let formats: Vec<&str> = p.spec.profile.formats.iter().map(|f| f.name()).collect();
        println!(
            "  {:12} {:40} formats: {}",
            name,
            p.spec.profile.description,
            formats.join(", ")
        );
    }
    Ok(())
}

/// `cargo xtask test`: the one gate. Unit tests first (fast, no external resources), then the
/// end-to-end tests in tests/ that build images and boot them in QEMU. `--no-fail-fast`: one
/// failing test binary must not hide how the others fare.
fn test(layout: &Layout, unit_only: bool, args: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .current_dir(&layout.root)
        .args([
            "test",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "axion-tests",
        ])
        .args(args)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("unit tests failed");
    }
    if unit_only {
        return Ok(());
    }
    doctor::ensure(&doctor::all_needs())?;
    let status = std::process::Command::new(&cargo)
        .current_dir(&layout.root)
        .args([
            "test",
            "--no-fail-fast",
            "--package",
            "axion-tests",
            "--",
            "--test-threads=1",
        ])
        .args(args)
        .status()
        .context("cannot run cargo test")?;
    if !status.success() {
        bail!("end-to-end tests failed");
    }
    Ok(())
}
