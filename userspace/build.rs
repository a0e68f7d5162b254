//! Builds the kernel programs (ebpf-probes/programs) for the bpf target with
//! the nightly toolchain and bpf-linker, so `include_bytes_aligned!` in
//! src/probes.rs embeds them. `cargo xtask setup` installs both.
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "nstrail-probes",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf-probes/programs"),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
