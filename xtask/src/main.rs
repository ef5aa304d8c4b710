//! `cargo xtask`: toolchain setup, the demo, the whole test suite, benchmarks, fuzz smoke.
//!
//! Every command runs `setup` first: it is idempotent and takes seconds once done, so a fresh
//! machine needs nothing but this repository and `cargo`.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "outpost developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check what the build and the tests need (Debian packages, bpf-linker, the
    /// linked BPF toolchain, bpffs).
    Setup,
    /// Run the edge: client/edge/origin namespaces, `outpost run` with XDP on the edge NIC,
    /// real clients of every TLS version, the stats, a login through Access and a reservation
    /// with its confirmation mail; serves until Ctrl-C.
    Demo {
        /// Passed to outpost-demo: `--once` (exit after printing), `--floor-only` (the XDP
        /// floor alone, mode by mode).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Every test: unit, BPF fixture table, proxy end to end, namespaces, fuzz and bench smoke.
    Test {
        /// Skip the fuzz smoke run.
        #[arg(long)]
        no_fuzz: bool,
        /// Skip the benchmark smoke run (every scenario once at a tiny size).
        #[arg(long)]
        no_bench: bool,
    },
    /// Benchmarks (they report, never assert). No subcommand: all of them.
    Bench {
        #[command(subcommand)]
        which: Option<Bench>,
        /// CI size: every scenario in seconds, so the code does not rot (numbers mean little).
        #[arg(long, global = true)]
        tiny: bool,
    },
    /// rustfmt check and clippy with warnings denied (the eBPF crate on its own, for the host
    /// with panic=abort, since it cannot build for the host otherwise).
    Lint,
    /// The Debian package, target/debian/outpost_<version>_<arch>.deb (cargo-deb): the release
    /// binary, the systemd unit, /etc/outpost/outpost.toml, man pages and completions.
    Package,
    /// Run each fuzz target for a few seconds.
    Fuzz {
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Bench {
    /// The fixture table through BPF_PROG_TEST_RUN against a count-and-pass baseline.
    Xdp {
        /// Runs per row (BPF_PROG_TEST_RUN repeat); default 1,000,000 (10,000 with --tiny).
        #[arg(long)]
        repeat: Option<u32>,
    },
    /// Keep-alive HTTPS GET: outpost (tokio-uring, epoll, compio), nginx, the origin alone.
    Proxy,
    /// Full TLS 1.3 handshakes per second: outpost against nginx.
    Handshake,
    /// Modern clients' latency during a legacy-hello flood; CPU per 1,000 legacy hellos, with
    /// the XDP floor (drop, reject) and without it (root: namespaces and XDP).
    Flood,
    /// RSS of the edge with 10,000 idle keep-alive TLS connections.
    Memory,
    /// WebSocket echo (32-byte messages, closed loop) through outpost and nginx, against a
    /// direct connection to the origin.
    Websocket,
    /// HTTP/2 over TLS with h2load (64 connections x 10 streams): outpost against nginx.
    H2,
    /// Time from `outpost policy set --fleet` to every node applying it, 2 and 8 nodes in
    /// namespaces sharing one PostgreSQL, 50 changes each (root).
    Fleet,
    /// Durable unique inserts per second through the store (embedded SQLite, PostgreSQL)
    /// beside pgbench on the same PostgreSQL, at 1, 16 and 256 callers.
    Store,
    /// A launch spike on the reservation page: open loop over TLS through a real edge,
    /// ramping until p99 passes 100 ms, embedded and PostgreSQL, beside pgbench running the
    /// reservation's own transaction.
    Reserve {
        /// Also the same spike on each store preloaded in bulk with this many reservations and
        /// their audit log, then list, export, audit queries, availability and a prune there.
        #[arg(long)]
        preload: Option<u64>,
    },
    /// Access: keep-alive req/s of a protected route against the same route unprotected,
    /// server-side time of /login, /callback and the code redemption, logins per second with a
    /// real identity provider in the loop.
    Access,
    /// Every scenario above, xdp first. Reports under results/<timestamp>/.
    All,
}

/// Debian packages for the build: the eBPF toolchain (see the README's toolchain notes), and
/// libssl for the legacy responder (the `openssl` crate).
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "build-essential",
    "libssl-dev",
    "pkg-config",
];
/// Debian packages the tests use: namespaces, real TLS clients, a TLS server, a TLS
/// scanner, inspection.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "openssl",
    "curl",
    "python3",
    "procps",
    "tcpdump",
    "util-linux",
    "bpftool",
    "testssl.sh",
    // The store's tests and bench start their own PostgreSQL (initdb, postgres, pgbench).
    "postgresql",
    // The applications' peers: an OpenID provider on Node.js, Chromium driven by
    // playwright-core for the two web pages, an SMTP server that keeps what it receives.
    "nodejs",
    "chromium",
    "python3-aiosmtpd",
    // The virtual environment for the PyPI peers below.
    "python3-venv",
    // nghttp, an HTTP/2 client the h2 tests drive besides curl.
    "nghttp2-client",
];
/// Debian packages of the benchmarks: wrk, the second client of the proxy bench; perf, for the
/// edge's flame graph (taskset, which pins the proxy bench's processes, is util-linux's);
/// nghttp2-client for h2load, the h2 bench's client.
const BENCH_PACKAGES: &[&str] = &["wrk", "linux-perf", "nghttp2-client"];
/// Debian packages of daemons the tests start by themselves (tests/prometheus.rs: Prometheus
/// scraping a fleet, `promtool` checking deploy/prometheus). Their postinst starts the service
/// wherever it can (`invoke-rc.d`, `deb-systemd-invoke`), and `prometheus` recommends
/// `prometheus-node-exporter`, another daemon: they are installed without recommends, under a
/// `policy-rc.d` that refuses every start, and left disabled, so nothing is running after setup
/// (a test's Prometheus listens on a port of its own, in a namespace).
const SERVICE_PACKAGES: &[&str] = &["prometheus"];
/// Debian's hook that `invoke-rc.d` and `deb-systemd-invoke` ask before starting a service
/// (exit 101: refused).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// npm projects of the tests (each with a package-lock.json): `npm ci` installs them.
const NPM_PROJECTS: &[&str] = &[
    "userspace/handlers/access/tests/idp",
    "userspace/handlers/reserve/tests/browser",
    "userspace/proxy/tests/websocket/browser",
];
/// PyPI peers of the tests, pinned, installed into the virtual environment [`PY_VENV`]:
/// tlslite-ng builds raw TLS records for the record-layer conformance tests; `websockets` and
/// `h2` are real WebSocket and HTTP/2 peers.
const PY_PACKAGES: &[&str] =
    &["tlslite-ng==0.8.2", "websockets==15.0.1", "h2==4.2.0", "ja4plus==1.4.0"];
/// Where the tests' Python lives (tests find it at `<workspace>/target/py/bin/python`).
const PY_VENV: &str = "target/py";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Targets in fuzz/fuzz_targets, each smoke-run by `cargo xtask test`.
const FUZZ_TARGETS: &[&str] = &["classify", "http_request", "http_authority", "access_token"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// cargo-deb builds the package: it reads its metadata from Cargo.toml, resolves `$auto`
/// dependencies from the binary's shared libraries with dpkg-shlibdeps' rules, writes conffiles
/// for /etc and the deb-systemd-helper snippets for the unit, and needs no debhelper tree.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// inferno (`inferno-collapse-perf`, `inferno-flamegraph`) folds the proxy bench's perf samples
/// into the edge's flame graph; Debian packages no flame graph tool.
const INFERNO_VERSION: &str = "0.12.8";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.task {
        Task::Setup => setup(),
        Task::Demo { args } => {
            setup()?;
            cargo(&["build", "-p", "outpost", "-p", "outpost-tests", "--bins"])?;
            run(Command::new(root.join("target/debug/outpost-demo"))
                .args(args)
                .env("OUTPOST_BIN", root.join("target/debug/outpost")))
        }
        Task::Test { no_fuzz, no_bench } => {
            setup()?;
            let started = Instant::now();
            cargo(&["build", "-p", "outpost"])?;
            // Default members: everything but the eBPF crate (built for BPF by dataplane's
            // build script). Compiled first, so the builds below overlap only with the
            // tests running (which mostly wait on peers and timeouts), not with compiling.
            cargo(&["test", "--no-run"])?;
            let prebuild = Prebuild::start(&root, !no_fuzz, !no_bench)?;
            // --nocapture shows each BPF fixture row and namespace client run.
            let tests = run(Command::new("cargo")
                .args(["test", "--", "--nocapture"])
                .env("OUTPOST_BIN", root.join("target/debug/outpost")));
            let prebuilt = prebuild.finish();
            tests?;
            prebuilt?;
            // The package from the release build above, installed and purged on this machine.
            let deb = package(&root)?;
            run(Command::new("cargo")
                .args(["test", "-p", "outpost-tests", "--features", "deb", "--test", "deb"])
                .args(["--", "--nocapture"])
                .env("OUTPOST_DEB", &deb))?;
            if !no_fuzz {
                fuzz(10)?;
            }
            if !no_bench {
                // Not a measurement: the benches run once at a tiny size so they do not rot.
                bench(&root, Bench::All, true)?;
            }
            println!("xtask test: all passed in {:.0?}", started.elapsed());
            Ok(())
        }
        Task::Bench { which, tiny } => {
            setup()?;
            bench(&root, which.unwrap_or(Bench::All), tiny)
        }
        Task::Lint => {
            setup()?;
            lint()
        }
        Task::Fuzz { seconds } => {
            setup()?;
            fuzz(seconds)
        }
        Task::Package => {
            setup()?;
            package(&root).map(drop)
        }
    }
}

/// The release builds of the benches and the fuzz targets, run while the tests run: the
/// tests spend most of their time waiting, and CI's time is the sum of the two otherwise. Its
/// output goes to `target/xtask-prebuild.log`, shown when it fails.
struct Prebuild {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Prebuild {
    fn start(root: &Path, fuzz: bool, bench: bool) -> Result<Prebuild> {
        let log = root.join("target/xtask-prebuild.log");
        let mut steps = Vec::new();
        if bench {
            // The very commands `bench` runs, so their features match and nothing is built
            // twice.
            steps.push("cargo build --release -p outpost".to_owned());
            for bin in ["xdp-bench", "store-bench", "reserve-bench", "fleet-bench", "outpost-load"]
            {
                steps.push(format!("cargo build --release -p outpost-benches --bin {bin}"));
            }
            steps.push("cargo bench --no-run -p outpost-access --bench access".to_owned());
        }
        if fuzz {
            install_cargo_fuzz()?;
            for target in FUZZ_TARGETS {
                steps.push(format!("(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build {target})"));
            }
        }
        if steps.is_empty() {
            return Ok(Prebuild { child: None, log });
        }
        let out = std::fs::File::create(&log)?;
        let child = Command::new("sh")
            .args(["-c", &format!("set -e; {}", steps.join("; "))])
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting the release and fuzz builds")?;
        println!(
            "xtask test: building benches and fuzz targets beside the tests ({})",
            log.display()
        );
        Ok(Prebuild { child: Some(child), log })
    }

    fn finish(self) -> Result<()> {
        let Some(mut child) = self.child else { return Ok(()) };
        let status = child.wait()?;
        if !status.success() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            bail!(
                "the release and fuzz builds failed: {status} (whole log: {})",
                self.log.display()
            );
        }
        Ok(())
    }
}

/// Runs one benchmark scenario (or all), at CI size with `tiny`.
fn bench(root: &Path, which: Bench, tiny: bool) -> Result<()> {
    // With `all`, a failing xdp bench does not keep the load scenarios from running; the
    // command still fails at the end.
    let mut xdp = Ok(());
    if let Bench::Xdp { .. } | Bench::All = which {
        let repeat = match which {
            Bench::Xdp { repeat: Some(r) } => r,
            _ if tiny => 10_000,
            _ => 1_000_000,
        };
        xdp = cargo(&["build", "--release", "-p", "outpost-benches", "--bin", "xdp-bench"])
            .and_then(|()| {
                run(Command::new(release_bin(root, "xdp-bench")).arg(repeat.to_string()))
            });
    }
    let mut store = Ok(());
    if let Bench::Store | Bench::All = which {
        store = results_bench(root, "store-bench", tiny);
    }
    let mut reserve = Ok(());
    if let Bench::Reserve { .. } | Bench::All = which {
        reserve = cargo(&["build", "--release", "-p", "outpost"]).and_then(|()| match which {
            Bench::Reserve { preload: Some(n) } => {
                results_bench_with(root, "reserve-bench", tiny, &["--preload", &n.to_string()])
            }
            _ => results_bench(root, "reserve-bench", tiny),
        });
    }
    let mut fleet = Ok(());
    if let Bench::Fleet | Bench::All = which {
        fleet = cargo(&["build", "--release", "-p", "outpost"])
            .and_then(|()| results_bench(root, "fleet-bench", tiny));
    }
    let mut access = Ok(());
    if let Bench::Access | Bench::All = which {
        access = cargo(&["build", "--release", "-p", "outpost"]).and_then(|()| {
            let mut cmd = Command::new("cargo");
            cmd.args(["bench", "-p", "outpost-access", "--bench", "access", "--", "--results"])
                .arg(root.join("results"))
                .env("OUTPOST_BIN", release_bin(root, "outpost"));
            if tiny {
                cmd.arg("--tiny");
            }
            run(&mut cmd)
        });
    }
    let scenario = match which {
        Bench::Xdp { .. } => return xdp,
        Bench::Store => return store,
        Bench::Reserve { .. } => return reserve,
        Bench::Access => return access,
        Bench::Fleet => return fleet,
        Bench::Proxy => "proxy",
        Bench::Handshake => "handshake",
        Bench::Flood => "flood",
        Bench::Memory => "memory",
        Bench::Websocket => "websocket",
        Bench::H2 => "h2",
        Bench::All => "all",
    };
    // `outpost run` is the system under test and `outpost attach` puts XDP in place. When it
    // does not build, a measurement run reports outpost as not available and the CI smoke run
    // (`--tiny`) fails: outpost-load decides, from OUTPOST_BIN.
    let outpost_built = cargo(&["build", "--release", "-p", "outpost"]).is_ok();
    cargo(&["build", "--release", "-p", "outpost-benches", "--bin", "outpost-load"])?;
    let mut load = Command::new(release_bin(root, "outpost-load"));
    load.args(["bench", scenario, "--results"]).arg(root.join("results"));
    if tiny {
        load.arg("--tiny");
    }
    if outpost_built {
        load.env("OUTPOST_BIN", release_bin(root, "outpost"));
    } else {
        load.env_remove("OUTPOST_BIN");
    }
    run(&mut load).and(xdp).and(store).and(reserve).and(fleet).and(access)
}

/// `cargo xtask package`: the release binary, what it generates from its own CLI definition
/// (man pages, completions), the packaged config, then cargo-deb on top of that build.
fn package(root: &Path) -> Result<PathBuf> {
    cargo(&["build", "--release", "-p", "outpost"])?;
    let outpost = release_bin(root, "outpost");
    // Where the asset paths of userspace/outpost/Cargo.toml point (`target/release/dist`).
    let dist = outpost.with_file_name("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    run(Command::new(&outpost).arg("generate-man").arg(dist.join("man")))?;
    // Debian policy: man pages gzipped (-n: no name or time in the header, so the package is
    // the same from the same sources). cargo-deb leaves files under target/ as they are.
    let pages: Vec<PathBuf> = std::fs::read_dir(dist.join("man"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    run(Command::new("gzip").arg("-9nf").args(&pages))?;
    run(Command::new(&outpost).arg("generate-completions").arg(dist.join("completions")))?;
    // The example is every key at its default; the package's copy keeps its state where the
    // unit's StateDirectory is, so `outpost access/audit --config /etc/outpost/outpost.toml`
    // find the admin token there too.
    let example = std::fs::read_to_string(root.join("userspace/outpost/outpost.example.toml"))?;
    let commented = "# data_dir = \"/var/lib/outpost\"";
    if !example.contains(commented) {
        bail!("outpost.example.toml has no `{commented}` line to set for the package");
    }
    let packaged = example.replacen(commented, "data_dir = \"/var/lib/outpost\"", 1);
    std::fs::write(dist.join("outpost.toml"), packaged)?;
    let out = Command::new("cargo")
        .args(["deb", "-p", "outpost", "--no-build"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", out.status);
    }
    // cargo-deb prints the package's path, last.
    let deb = String::from_utf8(out.stdout)?
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| p.is_file())
        .context("cargo deb did not print the package it wrote")?;
    println!("xtask package: {} (inspect with `dpkg-deb -I` and `dpkg-deb -c`)", deb.display());
    Ok(deb)
}

/// Builds and runs the bench binary `bin` of outpost-benches, which writes under results/ and
/// takes `--tiny`; the release `outpost` is the edge it measures, when it needs one.
fn results_bench(root: &Path, bin: &str, tiny: bool) -> Result<()> {
    results_bench_with(root, bin, tiny, &[])
}

/// [`results_bench`] with more arguments for the bench.
fn results_bench_with(root: &Path, bin: &str, tiny: bool, args: &[&str]) -> Result<()> {
    cargo(&["build", "--release", "-p", "outpost-benches", "--bin", bin])?;
    let mut cmd = Command::new(release_bin(root, bin));
    cmd.args(args);
    cmd.arg("--results").arg(root.join("results"));
    cmd.env("OUTPOST_BIN", release_bin(root, "outpost"));
    if tiny {
        cmd.arg("--tiny");
    }
    run(&mut cmd)
}

/// A binary of `cargo build --release`: under `CARGO_TARGET_DIR` when it is set (relative to the
/// workspace, as cargo takes it), else under target/.
fn release_bin(root: &Path, name: &str) -> PathBuf {
    let target =
        env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d));
    target.join("release").join(name)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").into()
}

fn setup() -> Result<()> {
    let started = Instant::now();
    let mut missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .chain(TEST_PACKAGES)
        .chain(BENCH_PACKAGES)
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let services: Vec<&str> = SERVICE_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() || !services.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
    }
    if !missing.is_empty() {
        missing.sort();
        println!("xtask setup: installing {}", missing.join(" "));
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "-o", "DPkg::Lock::Timeout=600"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !services.is_empty() {
        install_services(&services)?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if !linker_ok {
        println!("xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
        let path = format!("/usr/lib/llvm-22/bin:{}", env::var("PATH").unwrap_or_default());
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))?;
    }
    // inferno's binaries have no --version; cargo's list of installed packages has it.
    let inferno_ok = output(Command::new("cargo").args(["install", "--list"]))
        .is_ok_and(|list| list.contains(&format!("inferno v{INFERNO_VERSION}:")));
    if !inferno_ok {
        println!("xtask setup: installing inferno {INFERNO_VERSION} (flame graphs)");
        run(Command::new("cargo")
            .args(["install", "inferno", "--version", INFERNO_VERSION, "--locked"])
            .args(["--no-default-features", "--features", "cli"]))?;
    }
    let deb_ok = output(Command::new("cargo").args(["install", "--list"]))
        .is_ok_and(|list| list.contains(&format!("cargo-deb v{CARGO_DEB_VERSION}:")));
    if !deb_ok {
        println!("xtask setup: installing cargo-deb {CARGO_DEB_VERSION} (the Debian package)");
        run(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]))?;
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("debian-rust")) {
        run(Command::new("rustup").args(["toolchain", "link", "debian-rust", "/usr"]))?;
    }
    for project in NPM_PROJECTS {
        // npm ci is quick when node_modules matches the lock file already.
        if !Path::new(project).join("node_modules/.package-lock.json").is_file() {
            println!("xtask setup: npm ci in {project}");
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(project))?;
        }
    }
    python_venv()?;
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf")) {
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    println!("xtask setup: ready ({:.1?})", started.elapsed());
    Ok(())
}

/// Installs `packages` (of [`SERVICE_PACKAGES`]) so that none of their services starts now or at
/// boot: no recommends, a refusing `policy-rc.d` for the install (one already there, such as a
/// container's, is left as it is), then disabled for sysvinit and systemd.
fn install_services(packages: &[&str]) -> Result<()> {
    println!("xtask setup: installing {} (services left stopped and disabled)", packages.join(" "));
    let policy = Path::new(POLICY_RC_D);
    let ours = !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: no service starts while it installs\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if ours {
        std::fs::remove_file(policy).with_context(|| format!("removing {POLICY_RC_D}"))?;
    }
    installed?;
    // Not at boot either. `systemctl disable` works without systemd running (it edits the
    // unit's links, and the sysvinit ones through systemd-sysv-install); update-rc.d where there
    // is no systemctl. Stopped, where systemd runs and started it anyway.
    let systemd = Path::new("/run/systemd/system").is_dir();
    let systemctl =
        Path::new("/usr/bin/systemctl").is_file() || Path::new("/bin/systemctl").is_file();
    for p in packages {
        let unit = format!("{p}.service");
        if systemctl && Path::new("/lib/systemd/system").join(&unit).is_file() {
            run(Command::new("systemctl").args(["disable", &unit]))?;
            if systemd {
                run(Command::new("systemctl").args(["stop", &unit]))?;
            }
        } else if Path::new("/etc/init.d").join(p).is_file() {
            run(Command::new("update-rc.d").args([p, "disable"]))?;
        }
    }
    Ok(())
}

/// The tests' Python environment: Debian's python3 with the pinned [`PY_PACKAGES`]. Skipped
/// when a marker names exactly these pins.
fn python_venv() -> Result<()> {
    let marker = Path::new(PY_VENV).join("outpost-pins");
    let want = PY_PACKAGES.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|have| have == want) {
        return Ok(());
    }
    println!("xtask setup: Python environment in {PY_VENV} ({})", PY_PACKAGES.join(" "));
    run(Command::new("python3").args(["-m", "venv", "--clear", PY_VENV]))?;
    run(Command::new(Path::new(PY_VENV).join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .args(PY_PACKAGES))?;
    std::fs::write(&marker, want)?;
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

fn fuzz(seconds: u32) -> Result<()> {
    install_cargo_fuzz()?;
    for target in FUZZ_TARGETS {
        println!("xtask fuzz: {target} for {seconds}s");
        run(Command::new("cargo")
            .current_dir("fuzz")
            // cargo-fuzz needs nightly flags; the stable toolchain accepts them this way.
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target, "--", &format!("-max_total_time={seconds}")]))?;
    }
    Ok(())
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // Default members: the workspace minus the eBPF crate, which only builds for BPF.
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    run(Command::new("cargo")
        .args(["clippy", "-p", "outpost-ebpf", "--target", "x86_64-unknown-linux-gnu"])
        .args(["--", "-D", "warnings"])
        .current_dir("ebpf/outpost-ebpf")
        .env("RUSTFLAGS", "-C panic=abort"))
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new("cargo").args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
