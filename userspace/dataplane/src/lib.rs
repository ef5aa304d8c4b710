//! Loads, attaches and drives outpost's XDP program.
//!
//! # Layout
//! - [`Dataplane`]: the loaded object; attach/detach with pinned links so the program stays
//!   attached after the loader exits. A pinned link can outlive its interface (the interface
//!   or its namespace deleted): [`links`] tells such stale pins apart, and `attach` replaces
//!   them.
//! - [`PinnedMaps`]: the policy, port, port mode, counter and redirect maps, opened from their
//!   pins; what `outpost policy`, `outpost stats` and `outpost run` use, with or without a
//!   loaded object.
//! - [`Stats`]: a summed snapshot of the per-CPU counters, as a table or JSON.
//! - [`HelloRecords`]: the records of sampled hellos, from the kernel's pinned ring buffer
//!   (recording is switched on with [`PinnedMaps::set_recording`]).

mod records;
mod stats;

use std::{
    collections::BTreeMap,
    fs,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use outpost_common::maps::{self as names, FlowKey, PORT_WORDS, VERSION_SLOTS};
pub use outpost_common::{
    maps::{Outcome, RecordConfig, PIN_DIR},
    record::HelloRecord,
    Mode, Policy, Verdict, Version,
};
pub use records::HelloRecords;
pub use stats::{versions_json, versions_since, write_versions, Stats, VersionTable};

/// The eBPF object, built by this crate's build script.
pub static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/outpost-ebpf"));

/// Protected ports when none were configured.
pub const DEFAULT_PORTS: &[u16] = &[443];

/// Where programs attach: in the driver (native) or in the generic SKB path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

/// The loaded eBPF object, with its maps pinned under `pin_dir`.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl Dataplane {
    /// Loads the object, reusing maps already pinned under `pin_dir` (so counters and policy
    /// survive) and pinning new ones. Writes the default policy and ports if none were set.
    pub fn load(pin_dir: &Path) -> Result<Dataplane> {
        ensure_privileges()?;
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            // Logs are off unless a foreground command starts a logger and raises the level.
            .override_global(aya_log::LEVEL, &0u8, false)
            .load(PROGRAM)
            .with_context(|| {
                format!(
                    "loading the eBPF object (maps pinned under {} from an older version may \
                     not match: `outpost detach --all --purge` removes them)",
                    pin_dir.display()
                )
            })?;
        let dp = Dataplane { ebpf, pin_dir: pin_dir.to_owned() };
        let mut maps = dp.maps()?;
        if maps.policy()?.configured == 0 {
            maps.set_policy(Policy::DEFAULT)?;
            maps.set_ports(DEFAULT_PORTS)?;
        }
        Ok(dp)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The maps of this object, through their pins.
    pub fn maps(&self) -> Result<PinnedMaps> {
        PinnedMaps::open(&self.pin_dir)
    }

    /// One of the object's XDP programs, loaded into the kernel (verified) on first use.
    pub fn program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load().with_context(|| format!("the kernel refused to load {name}"))?;
        }
        Ok(prog)
    }

    /// Attaches `program` to `iface` and pins the link, so it stays attached after exit. A
    /// link pinned for `iface` whose interface is gone is replaced (the report says so); a live
    /// one is an error.
    pub fn attach(&mut self, program: &str, iface: &str, mode: AttachMode) -> Result<Attached> {
        let link_pin = link_path(&self.pin_dir, iface);
        let mut report = Attached { replaced_stale: false };
        if link_pin.exists() {
            match link_state(&link_pin)? {
                LinkState::Live { .. } => bail!(
                    "outpost is already attached to {iface} (pinned at {}); run `outpost detach \
                     --iface {iface}` first",
                    link_pin.display()
                ),
                LinkState::Stale => {
                    // The kernel detached it when the interface went away; the pin only keeps
                    // a dead link object alive.
                    fs::remove_file(&link_pin)
                        .with_context(|| format!("removing {}", link_pin.display()))?;
                    report.replaced_stale = true;
                }
            }
        }
        interface_index(iface)?;
        let prog = self.program(program)?;
        let xdp_mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        let id = prog.attach(iface, xdp_mode).map_err(|e| {
            let hint = match mode {
                AttachMode::Native => " (the driver may not support native XDP: try `--mode skb`)",
                AttachMode::Skb => "",
            };
            anyhow!("attaching to {iface} failed: {e}{hint}")
        })?;
        let link = prog.take_link(id)?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            anyhow!("the kernel attached {iface} without a BPF link, which cannot be pinned: {e}")
        })?;
        fd_link
            .pin(&link_pin)
            .with_context(|| format!("pinning the link at {}", link_pin.display()))?;
        Ok(report)
    }
}

/// What [`Dataplane::attach`] did besides attaching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attached {
    /// A pinned link for the interface was stale (its interface had gone) and was replaced.
    pub replaced_stale: bool,
}

/// What a pinned link is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Attached to the interface with this index (in the namespace it was attached in).
    Live { ifindex: u32 },
    /// Attached to nothing: its interface was removed, or its namespace deleted. The kernel
    /// detached the program then; only the pin is left.
    Stale,
}

/// The state of the link pinned at `pin`: the kernel reports an XDP link whose device went
/// away with interface index 0.
pub fn link_state(pin: &Path) -> Result<LinkState> {
    let fd =
        bpf_obj_get(pin).with_context(|| format!("opening the pinned link {}", pin.display()))?;
    let ifindex = xdp_link_ifindex(&fd)
        .with_context(|| format!("reading the pinned link {}", pin.display()))?;
    Ok(if ifindex == 0 { LinkState::Stale } else { LinkState::Live { ifindex } })
}

/// Every link pinned under `pin_dir`, by interface name, with its state.
pub fn links(pin_dir: &Path) -> Result<Vec<(String, LinkState)>> {
    attached_interfaces(pin_dir)?
        .into_iter()
        .map(|iface| {
            let state = link_state(&link_path(pin_dir, &iface))?;
            Ok((iface, state))
        })
        .collect()
}

/// Interfaces with a live pinned outpost link (stale pins left out).
pub fn live_interfaces(pin_dir: &Path) -> Result<Vec<String>> {
    Ok(links(pin_dir)?
        .into_iter()
        .filter(|(_, s)| matches!(s, LinkState::Live { .. }))
        .map(|(i, _)| i)
        .collect())
}

/// bpf(2) commands (uapi `enum bpf_cmd`).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of the per-type union in `struct bpf_link_info` (after type, id, prog_id; 8-aligned);
/// for an XDP link its first field is the interface index.
const LINK_INFO_UNION: usize = 16;

/// BPF_OBJ_GET: a new descriptor for the object pinned at `path`.
fn bpf_obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("a NUL in the pin path"))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: a bpf(2) call with an attr buffer larger than the command reads, zeroed past it.
    let fd =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), size_of_val(&attr)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_GET_INFO_BY_FD on a link: its XDP interface index (0 once the device is gone).
fn xdp_link_ifindex(fd: &OwnedFd) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u8; 128];
    // union bpf_attr for OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u32 as u64 | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: as above; the kernel writes at most `info.len()` bytes into `info`.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, attr.as_mut_ptr(), size_of_val(&attr))
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let word = &info[LINK_INFO_UNION..LINK_INFO_UNION + 4];
    Ok(u32::from_ne_bytes(word.try_into().expect("four bytes")))
}

/// Detaches whatever outpost attached to `iface`.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<()> {
    ensure_privileges()?;
    let pin = link_path(pin_dir, iface);
    if !pin.exists() {
        bail!("outpost is not attached to {iface} (no link pinned at {})", pin.display());
    }
    let link = PinnedLink::from_pin(&pin)
        .with_context(|| format!("opening the pinned link {}", pin.display()))?;
    // Unpinning drops the last reference: the kernel detaches the program.
    drop(link.unpin().with_context(|| format!("unpinning {}", pin.display()))?);
    Ok(())
}

/// Interfaces with a pinned outpost link, live or stale.
pub fn attached_interfaces(pin_dir: &Path) -> Result<Vec<String>> {
    let Ok(entries) = fs::read_dir(pin_dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
            out.push(iface.to_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the pinned maps (counters and policy start afresh on the next attach).
pub fn purge(pin_dir: &Path) -> Result<()> {
    if !attached_interfaces(pin_dir)?.is_empty() {
        bail!("outpost is still attached; detach every interface before purging");
    }
    if pin_dir.exists() {
        fs::remove_dir_all(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(())
}

const LINK_PREFIX: &str = "link-";

fn link_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("{LINK_PREFIX}{iface}"))
}

/// The kernel's index of `iface`, or a clear error.
pub fn interface_index(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(|_| anyhow!("bad interface name"))?;
    // SAFETY: a NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no network interface named {iface} (see `ip link`)"),
        i => Ok(i),
    }
}

/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_BPF: u32 = 39;

/// Loading and attaching need CAP_BPF and CAP_NET_ADMIN in the effective set: root has them,
/// and so has the packaged service's unprivileged user (ambient capabilities). What else the
/// kernel asks (CAP_PERFMON for the verifier) shows as the kernel's own refusal.
fn ensure_privileges() -> Result<()> {
    let effective = effective_capabilities().unwrap_or(0);
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_NET_ADMIN, "CAP_NET_ADMIN")]
        .into_iter()
        .filter(|(cap, _)| effective & (1u64 << cap) == 0)
        .map(|(_, name)| name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "outpost needs {} to load, attach or read BPF maps (root has them; the systemd unit \
             grants them to the outpost user)",
            missing.join(" and ")
        );
    }
    Ok(())
}

/// This process's effective capability set, from /proc/self/status (`CapEff`).
fn effective_capabilities() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs on /sys/fs/bpf if it is not there (a fresh machine has none).
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    // The pin directory itself on bpffs is enough: under the systemd unit /sys/fs/bpf is a
    // private tmpfs with only the host's pin directory bound in.
    if statfs_type(root) == Some(BPF_FS_MAGIC) || statfs_type(pin_dir) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let (src, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: NUL-terminated strings; no mount data.
    let rc =
        unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        bail!(
            "bpffs is not mounted on /sys/fs/bpf and mounting it failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn statfs_type(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// The pinned maps userspace reads and writes.
pub struct PinnedMaps {
    policy: Array<MapData, Policy>,
    ports: Array<MapData, u64>,
    port_modes: HashMap<MapData, u16, u8>,
    version_stats: PerCpuArray<MapData, u64>,
    parse_stats: PerCpuArray<MapData, u64>,
    redirects: HashMap<MapData, FlowKey, u64>,
    record_config: Array<MapData, RecordConfig>,
}

/// A redirect recorded by the kernel longer ago than this belongs to an earlier connection on
/// the same four-tuple, not to the one asking (a legacy hello reaches userspace within a round
/// trip of the kernel's decision; the handshake timeout bounds it anyway).
pub const REDIRECT_MAX_AGE: Duration = Duration::from_secs(10);

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<PinnedMaps> {
        ensure_privileges()?;
        let open = |name: &str| -> Result<MapData> {
            let path = pin_dir.join(name);
            MapData::from_pin(&path).map_err(|e| {
                if path.exists() {
                    anyhow!("opening {}: {e}", path.display())
                } else {
                    anyhow!(
                        "outpost is not loaded: no map pinned at {} (run `outpost attach \
                         --iface IF` first)",
                        path.display()
                    )
                }
            })
        };
        let stale = || {
            format!(
                "the maps pinned under {} come from another version of outpost (`outpost \
                 detach --all --purge` removes them; counters and policy start afresh)",
                pin_dir.display()
            )
        };
        let version_stats = open(names::VERSION_STATS)?;
        if version_stats.info()?.max_entries() != VERSION_SLOTS {
            bail!("{}", stale());
        }
        let maps = (|| -> Result<PinnedMaps> {
            Ok(PinnedMaps {
                policy: Array::try_from(Map::Array(open(names::POLICY)?))?,
                ports: Array::try_from(Map::Array(open(names::PORTS)?))?,
                port_modes: HashMap::try_from(Map::HashMap(open(names::PORT_MODES)?))?,
                version_stats: PerCpuArray::try_from(Map::PerCpuArray(version_stats))?,
                parse_stats: PerCpuArray::try_from(Map::PerCpuArray(open(names::PARSE_STATS)?))?,
                redirects: HashMap::try_from(Map::LruHashMap(open(names::REDIRECTS)?))?,
                record_config: Array::try_from(Map::Array(open(names::RECORD_CONFIG)?))?,
            })
        })();
        maps.with_context(stale)
    }

    pub fn policy(&self) -> Result<Policy> {
        Ok(self.policy.get(&0, 0)?)
    }

    pub fn set_policy(&mut self, mut policy: Policy) -> Result<()> {
        policy.configured = 1;
        Ok(self.policy.set(0, policy, 0)?)
    }

    /// Protected ports, ascending.
    pub fn ports(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for word in 0..PORT_WORDS {
            let bits = self.ports.get(&word, 0)?;
            for bit in 0..64 {
                if bits & (1 << bit) != 0 {
                    out.push((word * 64 + bit) as u16);
                }
            }
        }
        Ok(out)
    }

    /// Replaces the protected ports. Words are written one by one: while this runs, a port
    /// being added or removed may briefly be in either state, never any other port.
    pub fn set_ports(&mut self, ports: &[u16]) -> Result<()> {
        let mut words = vec![0u64; PORT_WORDS as usize];
        for &p in ports {
            words[p as usize / 64] |= 1 << (p % 64);
        }
        for (i, w) in words.into_iter().enumerate() {
            if self.ports.get(&(i as u32), 0)? != w {
                self.ports.set(i as u32, w, 0)?;
            }
        }
        Ok(())
    }

    /// Ports with a mode of their own.
    pub fn port_modes(&self) -> Result<BTreeMap<u16, Mode>> {
        let mut out = BTreeMap::new();
        for entry in self.port_modes.iter() {
            let (port, mode) = entry?;
            if let Some(m) = Mode::from_u8(mode) {
                out.insert(port, m);
            }
        }
        Ok(out)
    }

    /// Replaces the ports with a mode of their own.
    pub fn set_port_modes(&mut self, modes: &BTreeMap<u16, Mode>) -> Result<()> {
        for (port, mode) in modes {
            self.port_modes.insert(port, *mode as u8, 0)?;
        }
        let gone: Vec<u16> = self
            .port_modes()
            .map(|m| m.into_keys().filter(|p| !modes.contains_key(p)).collect())?;
        for port in gone {
            self.port_modes.remove(&port)?;
        }
        Ok(())
    }

    /// Whether the kernel passed the legacy hello of the connection `key` on to the legacy
    /// responder within its budget (within [`REDIRECT_MAX_AGE`]); the record is taken, so it
    /// answers yes once.
    pub fn take_redirect(&mut self, key: &FlowKey) -> bool {
        let Ok(at) = self.redirects.get(key, 0) else { return false };
        let _ = self.redirects.remove(key);
        monotonic_ns().saturating_sub(at) <= REDIRECT_MAX_AGE.as_nanos() as u64
    }

    /// Whether the kernel records hellos into the `hello_records` ring, and one in how many
    /// (`sample`: 1 records every hello; each CPU counts its own). Off (`enabled` false or
    /// `sample` 0) until set: a new load starts off, a reload keeps the setting. Read the
    /// records with [`HelloRecords`].
    pub fn set_recording(&mut self, enabled: bool, sample: u32) -> Result<()> {
        let config = RecordConfig { enabled: enabled as u32, sample };
        Ok(self.record_config.set(0, config, 0)?)
    }

    /// The recording setting in force: `(enabled, sample)`; recording is on when both are
    /// non-zero.
    pub fn recording(&self) -> Result<(bool, u32)> {
        let c = self.record_config.get(&0, 0)?;
        Ok((c.enabled != 0, c.sample))
    }

    /// Sums the per-CPU counters.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        for v in Version::ALL {
            for d in Verdict::ALL {
                let slot = names::version_slot(v, d);
                s.versions[v as usize][d as usize] = self.version_stats.get(&slot, 0)?.iter().sum();
            }
        }
        for o in Outcome::ALL {
            s.outcomes[o as usize] = self.parse_stats.get(&(o as u32), 0)?.iter().sum();
        }
        // The kernel counts each packet once, by its outcome (`Outcome::TERMINAL`).
        s.outcomes[Outcome::Packets as usize] =
            Outcome::TERMINAL.iter().map(|o| s.outcomes[*o as usize]).sum();
        Ok(s)
    }
}
