//! Heap allocations per keep-alive request through the origin handler, counted by this test
//! binary's global allocator: `outpost_proxy::run` in-process with one worker; the client
//! (curl) and the origin (the integration tests' echo origin, Python) are processes of their
//! own, so what is counted is the edge's work. Two runs of curl on one connection each, with
//! few and with many requests: the difference is what the extra requests cost, with the
//! connection's own setup (handshake, buffers) cancelled out. One test in this file: it sends
//! SIGTERM to its own process.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    thread,
};

use outpost_proxy::{Registry, RunOptions};
use outpost_testkit::{curl, free_port, stdout, wait_for_admin, InProcessConfig, TempDir};

/// Counts every allocation and reallocation, on any thread.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Requests in the short and the long run; their difference is what is measured.
const FEW: usize = 50;
const MANY: usize = 1050;

/// What one more keep-alive request may allocate in the edge: none. On 2026-12-01 (debug
/// build) it went from 60 to 14, then to 5, then to 2, and to 0 on 2026-12-02: a head's fields
/// borrowed from the buffer it was read into and sixteen of them inline in the head, the
/// upstream request a clone of those borrows, the handler chain inline, the status line
/// written without formatting, the request's future, the handlers' contexts and phase futures
/// in per-thread pooled blocks (`outpost_api::pooled`), httparse's slots on the stack unless a
/// head has more than 100 fields, the idle read and the plaintext buffers taken from the
/// per-thread I/O pool, and the records after the handshake opened and sealed in place
/// (`outpost_proxy::records`; rustls 0.23 moved each through a `Vec` both ways). What is left
/// is a few allocations per thousand requests (histogram and pool growth); one per request
/// would be 1.0.
const LIMIT_PER_REQUEST: f64 = 0.05;

/// `curl` sending `n` GETs over one keep-alive connection; the number of allocations the edge
/// made meanwhile.
fn allocations_for(https: u16, n: usize) -> u64 {
    let url = format!("https://127.0.0.1:{https}/alloc/[1-{n}]");
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let out =
        curl(&["-o", "/dev/null", "-w", "STATUS %{http_code} CONNECTS %{num_connects}\n", &url]);
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    let text = stdout(&out);
    let statuses = text.lines().filter(|l| l.starts_with("STATUS ")).collect::<Vec<_>>();
    assert_eq!(statuses.len(), n, "curl did not get {n} answers:\n{text}");
    assert!(statuses.iter().all(|l| l.starts_with("STATUS 200 ")), "{text}");
    let connects: u32 =
        statuses.iter().filter_map(|l| l.rsplit(' ').next()?.parse::<u32>().ok()).sum();
    assert_eq!(connects, 1, "the requests did not share one keep-alive connection");
    after - before
}

#[test]
fn allocations_per_keep_alive_request_through_the_origin_handler_stay_bounded() {
    let dir = TempDir::new("alloc");
    let origin_port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../tests/servers/origin.py");
    let mut origin = Command::new("python3")
        .arg(&script)
        .args(["--addr", "127.0.0.1", "--port", &origin_port.to_string(), "--name", "o"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting the echo origin (python3)");
    let mut out = BufReader::new(origin.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("ready"), "the origin did not start: {ready:?}");
    // It prints a line per request: keep reading (into a fixed buffer, so that this process
    // allocates nothing per request), or it dies of a broken pipe.
    thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));

    let InProcessConfig { path: config, https, admin } = InProcessConfig::write(
        &dir,
        &format!(
            "[[routes]]\npath = \"/\"\n[routes.origin]\nservers = [\"127.0.0.1:{origin_port}\"]\n\
             health_check = {{ interval_ms = 0 }}\n"
        ),
    );
    let registry = Registry::new().route(outpost_origin::OriginFactory::default());
    let server = thread::spawn(move || {
        outpost_proxy::run(RunOptions { config: Some(config), registry, ..RunOptions::default() })
    });
    wait_for_admin(admin);

    // Warm up: the origin pool's connection, the histograms, the first connection's buffers.
    allocations_for(https, FEW);
    let few = allocations_for(https, FEW);
    let many = allocations_for(https, MANY);
    let per_request = many.saturating_sub(few) as f64 / (MANY - FEW) as f64;
    println!(
        "allocations: {few} for a connection with {FEW} requests, {many} with {MANY}: \
         {per_request:.3} per keep-alive request"
    );

    // SAFETY: a signal to this process; outpost's control thread handles it.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let result = server.join().expect("run panicked");
    let _ = origin.kill();
    let _ = origin.wait();
    assert!(result.is_ok(), "run failed: {result:?}");
    assert!(
        per_request <= LIMIT_PER_REQUEST,
        "{per_request:.3} heap allocations per keep-alive request (at most {LIMIT_PER_REQUEST}): \
         something on the request path allocates more than before"
    );
}
