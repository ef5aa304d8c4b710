use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf = cargo_metadata_root()?.join("ebpf/outpost-ebpf");
    let toolchain = std::env::var("AYA_TOOLCHAIN").unwrap_or_else(|_| "debian-rust".into());
    println!("cargo:rerun-if-env-changed=AYA_TOOLCHAIN");
    let package = Package {
        name: "outpost-ebpf",
        root_dir: ebpf.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {ebpf:?}"))?,
        ..Default::default()
    };
    // The eBPF crate uses `asm!` for one atomic add (BPF's core has no atomic read-modify-write),
    // an unstable feature on this architecture: allow it for that crate too, beside aya-ebpf.
    // A list of crates, never "1", which would make aya-build ask for -Z build-std.
    // The cargo that aya-build starts inherits it; config [env] values do not override it.
    std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf,outpost_ebpf");
    println!("cargo:rerun-if-env-changed=RUSTC_BOOTSTRAP");
    // The workspace's release profile links the userspace binaries whole (LTO, one codegen
    // unit); the eBPF program is built as it was verified and measured: without LTO, its
    // dependencies in cargo's default codegen units (`[profile.release.package.outpost-ebpf]`
    // still gives the program itself one).
    std::env::set_var("CARGO_PROFILE_RELEASE_LTO", "false");
    std::env::set_var("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16");
    // Leaked: the toolchain name must outlive the call and this process ends right after.
    let toolchain: &'static str = Box::leak(toolchain.into_boxed_str());
    aya_build::build_ebpf([package], Toolchain::Custom(toolchain))
        .context("building the eBPF program (run `cargo xtask setup` once on a new machine)")
}

fn cargo_metadata_root() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    Ok(std::path::Path::new(&manifest).join("../.."))
}
