//! Child processes the bench starts (origin, nginx, outpost, generator runs) and what /proc says
//! about them and about the machine.
//!
//! Every child is started in a process group of its own (the terminal's Ctrl-C reaches only the
//! bench, which then stops in order), with `PR_SET_PDEATHSIG` = SIGKILL (if the bench itself is
//! killed, the kernel kills its children), and is killed by PID when its [`Child`] guard drops,
//! panics included.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{self, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C (and SIGTERM) set a flag that every wait loop checks, so the scenarios return
/// and the guards tear everything down.
pub fn stop_on_signals() {
    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Fails with "interrupted" once Ctrl-C was pressed.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE as far as this process may (root: up to `fs.nr_open`); children inherit
/// it. Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = libc::rlimit { rlim_cur: nr_open, rlim_max: nr_open };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            let soft = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A started child; killed (SIGKILL to its process group, then reaped) on drop.
pub struct Child {
    pub name: String,
    pub command: String,
    child: Option<process::Child>,
    pub stderr_path: PathBuf,
    /// Lines of stdout, as they come (a reader thread forwards them).
    stdout_lines: Option<mpsc::Receiver<String>>,
    /// Every stdout line seen so far.
    pub stdout_seen: Mutex<Vec<String>>,
}

/// How a child's stderr is handled.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// To a file in the run's scratch directory (servers: shown if they fail).
    File,
    /// Straight to the bench's stderr (the generator's progress lines).
    Inherit,
}

impl Child {
    pub fn spawn(name: &str, argv: &[String], scratch: &Path, stderr: Stderr) -> Result<Child> {
        let command = shell_line(argv);
        let stderr_path = scratch.join(format!("{}.stderr", sanitize(name)));
        let err = match stderr {
            Stderr::File => Stdio::from(
                fs::File::create(&stderr_path)
                    .with_context(|| format!("creating {}", stderr_path.display()))?,
            ),
            Stderr::Inherit => Stdio::inherit(),
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("starting `{command}`"))?;
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Child {
            name: name.to_owned(),
            command,
            child: Some(child),
            stderr_path,
            stdout_lines: Some(rx),
            stdout_seen: Mutex::new(Vec::new()),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, process::Child::id)
    }

    /// `Some(status)` once it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for a stdout line containing `marker`, at most `limit`; fails (with the tail of its
    /// stderr) if the child exits first.
    pub fn wait_for_line(&mut self, marker: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            check_interrupted()?;
            let rx = self.stdout_lines.as_ref().expect("stdout reader");
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    self.stdout_seen.lock().expect("lock").push(line.clone());
                    if line.contains(marker) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(2));
                    bail!(
                        "{} exited ({}) before printing {marker:?}\n$ {}\n{}",
                        self.name,
                        status.map_or("still running".into(), |s| s.to_string()),
                        self.command,
                        self.stderr_tail(20)
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{} printed no {marker:?} within {limit:?}\n$ {}\n{}",
                    self.name,
                    self.command,
                    self.stderr_tail(20)
                );
            }
        }
    }

    /// Stdout lines not yet taken by [`wait_for_line`](Self::wait_for_line): after it exited,
    /// all of them (waiting at most `limit` for the reader to reach the end).
    pub fn take_stdout(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut lines = Vec::new();
        let Some(rx) = self.stdout_lines.as_ref() else { return lines };
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            lines.push(line);
        }
        lines
    }

    /// Waits for it to exit by itself, at most `limit`; kills it past that. `None`: killed.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && !interrupted() {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        None
    }

    /// The last `n` lines of its stderr file (empty when stderr was inherited).
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL to its process group (what it forked dies too: nginx's workers), then reaped;
    /// returns once no process of the group is left (at most a few seconds).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = -(child.id() as libc::pid_t);
            // SAFETY: plain syscall; the group is one this process created.
            unsafe { libc::kill(group, libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            let deadline = Instant::now() + Duration::from_secs(5);
            // SAFETY: signal 0 only checks whether the group still has members.
            while unsafe { libc::kill(group, 0) } == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

pub fn shell_line<S: AsRef<str>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.as_ref();
            if a.is_empty()
                || a.contains(|c: char| !c.is_ascii_alphanumeric() && !"-_./:=,@".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command to completion (at most `limit`); its stdout, or an error with its output.
pub fn run(argv: &[&str], limit: Duration) -> Result<String> {
    let line = shell_line(argv);
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.process_group(0);
    let child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.with_context(|| format!("waiting for `{line}`"))?;
            if !out.status.success() {
                bail!(
                    "`{line}` failed ({}): {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(_) => {
            // SAFETY: plain syscall on the group this process created.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
            bail!("`{line}` did not finish within {limit:?}")
        }
    }
}

/// Clock ticks per second (utime/stime in /proc are in these).
fn ticks_per_second() -> f64 {
    // SAFETY: no arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `pid` and every descendant (nginx's workers), read from /proc.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                parents.push((pid, stat.ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

/// User + system CPU seconds of `root` and its descendants (all threads).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let ticks: u64 =
        process_tree(root).into_iter().filter_map(read_stat).map(|s| s.utime + s.stime).sum();
    ticks as f64 / ticks_per_second()
}

/// On-CPU seconds of the live threads of `root` and its descendants, from each thread's
/// schedstat (nanoseconds): far finer than the clock ticks of utime+stime, but a thread that
/// already exited is not in it (outpost's and nginx's workers live as long as their process).
pub fn tree_cpu_seconds_fine(root: u32) -> f64 {
    let ns: u64 = process_tree(root)
        .into_iter()
        .flat_map(|pid| fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten())
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// Memory of a process tree, KiB.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Memory {
    /// Sum of VmRSS (pages shared between nginx's processes count once per process).
    pub rss_kib: u64,
    /// Sum of Pss (shared pages split between the processes sharing them).
    pub pss_kib: u64,
    pub processes: usize,
}

pub fn tree_memory(root: u32) -> Memory {
    let mut m = Memory::default();
    for pid in process_tree(root) {
        let field = |file: &str, key: &str| -> Option<u64> {
            let text = fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
            let line = text.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].split_whitespace().next()?.parse().ok()
        };
        if let Some(rss) = field("status", "VmRSS:") {
            m.rss_kib += rss;
            m.pss_kib += field("smaps_rollup", "Pss:").unwrap_or(rss);
            m.processes += 1;
        }
    }
    m
}

/// Whole-machine CPU time from the first line of /proc/stat, in seconds.
///
/// On a tickless kernel the idle (and iowait) figures are precise, but user/system/softirq are
/// sampled at each tick, and a CPU that wakes for a burst shorter than a tick and sleeps again
/// is often not sampled at all: under many short bursts (a flood of tiny connections) their sum
/// undercounts. So "busy" is wall time × CPUs − idle; the per-mode figures are tick samples.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    pub user: f64,
    pub system: f64,
    pub irq: f64,
    pub softirq: f64,
    pub idle: f64,
    /// Wall time × CPUs, since an arbitrary origin.
    capacity: f64,
}

impl MachineCpu {
    pub fn now() -> MachineCpu {
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpus = text.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
        let line = text.lines().next().unwrap_or_default();
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse::<f64>().unwrap_or(0.0) / ticks_per_second())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal (guest time is inside user already).
        MachineCpu {
            user: at(0) + at(1),
            system: at(2),
            irq: at(5),
            softirq: at(6),
            idle: at(3) + at(4),
            capacity: origin.elapsed().as_secs_f64() * cpus.max(1) as f64,
        }
    }

    pub fn since(self, before: MachineCpu) -> MachineCpu {
        MachineCpu {
            user: self.user - before.user,
            system: self.system - before.system,
            irq: self.irq - before.irq,
            softirq: self.softirq - before.softirq,
            idle: self.idle - before.idle,
            capacity: self.capacity - before.capacity,
        }
    }

    /// CPU seconds not idle, all CPUs together (only meaningful on a delta).
    pub fn busy(self) -> f64 {
        (self.capacity - self.idle).max(0.0)
    }
}

/// TCP sockets in `state` (/proc/net/tcp's hex code: "01" established, "0A" listen) whose local
/// port is `port`, in the network namespace of `netns_pid` (this process's when `None`).
pub fn sockets_on(port: u16, state: &str, netns_pid: Option<u32>) -> usize {
    let base = match netns_pid {
        Some(pid) => format!("/proc/{pid}/net"),
        None => "/proc/net".to_owned(),
    };
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .map(|f| {
            fs::read_to_string(format!("{base}/{f}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() > 3 && w[1].ends_with(&want) && w[3] == state
                })
                .count()
        })
        .sum()
}

/// A free TCP port on `ip` (bound and released: another process could take it in between, but
/// nothing else on this machine picks ports in this range at this pace).
pub fn free_port(ip: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
    Ok(l.local_addr()?.port())
}

/// Waits until something listens on `port` in `child`'s network namespace, at most `limit`;
/// fails early, with its stderr, if the child exits.
pub fn wait_listening(port: u16, limit: Duration, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        check_interrupted()?;
        if sockets_on(port, "0A", Some(child.pid())) > 0 {
            return Ok(());
        }
        if let Some(status) = child.exited() {
            bail!(
                "{} exited ({status}):\n$ {}\n{}",
                child.name,
                child.command,
                child.stderr_tail(20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} not listening on port {port} within {limit:?}\n$ {}\n{}",
                child.name,
                child.command,
                child.stderr_tail(20)
            );
        }
        thread::sleep(Duration::from_millis(30));
    }
}
