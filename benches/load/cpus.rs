//! Which CPUs each process of the proxy scenario may use (`taskset -c`), so that the edge does
//! not share its CPUs with the client that loads it.
//!
//! Of the CPUs this process may run on, the first half (rounded down) go to the edge, which
//! gets one worker per CPU; the rest go to the client (the generator's runtime threads and wrk's
//! threads, one per CPU) and to the origin, which is cheap beside TLS. On the 2-CPU machines of
//! this project that is the edge on CPU 0 with one worker, the client and the origin on CPU 1.
//! With a single CPU nothing can be split: nothing is pinned and the edge keeps its default
//! worker count.

use std::fmt;

use crate::systems::PROXY_WORKERS;

/// CPUs a child is confined to, or none (it runs wherever the scheduler puts it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pin(Option<Vec<usize>>);

impl Pin {
    /// Not pinned.
    pub fn none() -> Pin {
        Pin(None)
    }

    /// Workers (threads or processes) a server so pinned gets: one per CPU, or the bench's
    /// default when it is not pinned.
    pub fn workers(&self) -> usize {
        self.0.as_ref().map_or(PROXY_WORKERS, Vec::len)
    }

    /// Threads a client so pinned gets: one per CPU, else `default`.
    pub fn threads_or(&self, default: usize) -> usize {
        self.0.as_ref().map_or(default, Vec::len)
    }

    /// `argv` behind `taskset -c LIST`, which execs it: the child's PID stays the program's.
    pub fn wrap(&self, argv: &[String]) -> Vec<String> {
        match &self.0 {
            None => argv.to_vec(),
            Some(cpus) => {
                let mut full = vec!["taskset".to_owned(), "-c".into(), list(cpus)];
                full.extend_from_slice(argv);
                full
            }
        }
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("any CPU"),
            Some(cpus) if cpus.len() == 1 => write!(f, "CPU {}", cpus[0]),
            Some(cpus) => write!(f, "CPUs {}", list(cpus)),
        }
    }
}

/// The proxy scenario's CPU split.
#[derive(Clone, Debug)]
pub struct Split {
    /// The system under test: nginx, outpost.
    pub edge: Pin,
    /// The generator, wrk and the origin.
    pub client: Pin,
    /// CPUs this process may use, all of them.
    pub allowed: Vec<usize>,
}

impl Split {
    /// The split of the CPUs this process may run on (its affinity mask).
    pub fn plan() -> Split {
        let allowed = allowed_cpus();
        if allowed.len() < 2 {
            return Split { edge: Pin::none(), client: Pin::none(), allowed };
        }
        let half = allowed.len() / 2;
        Split {
            edge: Pin(Some(allowed[..half].to_vec())),
            client: Pin(Some(allowed[half..].to_vec())),
            allowed,
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        if self.edge.0.is_none() {
            return format!(
                "CPU split: none ({} CPU allowed): the edge ({} workers), the origin and the \
                 client share it",
                self.allowed.len(),
                self.edge.workers()
            );
        }
        format!(
            "CPU split (taskset, {} CPUs): edge on {} alone ({} worker{}); client (outpost-load \
             gen, {} thread{}; wrk, {} thread{}) and origin on {}",
            self.allowed.len(),
            self.edge,
            self.edge.workers(),
            plural(self.edge.workers()),
            self.client.workers(),
            plural(self.client.workers()),
            self.client.workers(),
            plural(self.client.workers()),
            self.client,
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed": self.allowed,
            "edge": self.edge.0,
            "edge_workers": self.edge.workers(),
            "client_and_origin": self.client.0,
            "client_threads": self.client.workers(),
        })
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A comma list, as `taskset -c` takes it.
fn list(cpus: &[usize]) -> String {
    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// The CPUs in this process's affinity mask, ascending.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills the one it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            return (0..n).collect();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_argv_keeps_the_program_last() {
        let p = Pin(Some(vec![1, 3]));
        assert_eq!(p.wrap(&["wrk".into(), "-t1".into()]), ["taskset", "-c", "1,3", "wrk", "-t1"]);
        assert_eq!(p.workers(), 2);
        assert_eq!(Pin::none().wrap(&["wrk".into()]), ["wrk"]);
    }
}
