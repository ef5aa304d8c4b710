//! Loads, attaches and drives outpost's XDP program.
//!
//! # Layout
//! - [`Dataplane`]: the loaded object; attach/detach with pinned links so the program stays
//!   attached after the loader exits.
//! - [`PinnedMaps`]: the policy, port and counter maps, opened from their pins; what `outpost
//!   policy` and `outpost stats` use, with or without a loaded object.
//! - [`Stats`]: a summed snapshot of the per-CPU counters, as a table or JSON.

mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use outpost_common::maps::{self as names, PORT_WORDS};
pub use outpost_common::{
    maps::{Outcome, PIN_DIR},
    Mode, Policy, Verdict, Version,
};
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

    /// Attaches `program` to `iface` and pins the link, so it stays attached after exit.
    pub fn attach(&mut self, program: &str, iface: &str, mode: AttachMode) -> Result<()> {
        let link_pin = link_path(&self.pin_dir, iface);
        if link_pin.exists() {
            bail!(
                "outpost is already attached to {iface} (pinned at {}); run `outpost detach \
                 --iface {iface}` first",
                link_pin.display()
            );
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
        Ok(())
    }
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

/// Interfaces with a pinned outpost link.
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

fn ensure_privileges() -> Result<()> {
    // SAFETY: no arguments, no memory.
    if unsafe { libc::geteuid() } != 0 {
        bail!("outpost needs root (CAP_BPF, CAP_NET_ADMIN) to load, attach or read BPF maps");
    }
    Ok(())
}

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs on /sys/fs/bpf if it is not there (a fresh machine has none).
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    if statfs_type(root) == Some(BPF_FS_MAGIC) {
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
    version_stats: PerCpuArray<MapData, u64>,
    parse_stats: PerCpuArray<MapData, u64>,
}

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
        Ok(PinnedMaps {
            policy: Array::try_from(Map::Array(open(names::POLICY)?))?,
            ports: Array::try_from(Map::Array(open(names::PORTS)?))?,
            version_stats: PerCpuArray::try_from(Map::PerCpuArray(open(names::VERSION_STATS)?))?,
            parse_stats: PerCpuArray::try_from(Map::PerCpuArray(open(names::PARSE_STATS)?))?,
        })
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
        Ok(s)
    }
}
