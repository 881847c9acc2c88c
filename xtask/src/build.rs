//! Builds: the XDP object (nightly, `bpfel-unknown-none`, linked by bpf-linker, as aya's
//! template does it) and the proxy. The XDP crate is outside the workspace's default members
//! because it cannot build for the host. The nested build's command is `proxy/build/xdp.rs`,
//! shared with the proxy's build script, which embeds the same object.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{proc, root, setup, target_dir, xdp_check};

#[path = "../../proxy/build/xdp.rs"]
mod xdp;

/// `cargo xtask build`: setup, the XDP object, then the release proxy.
pub fn all() -> Result<PathBuf> {
    setup::setup()?;
    ebpf()?;
    release()
}

/// `cargo xtask build-ebpf`: builds the XDP object, checks its sections and, as root, that
/// the kernel accepts it and it judges packets as it should; returns its path.
pub fn ebpf() -> Result<PathBuf> {
    if let Some(missing) = xdp::missing_tool() {
        bail!("cannot build the XDP object: {missing}");
    }
    let target = xdp::target_dir(&root());
    proc::run(&mut xdp::command(&root(), &target))?;
    let object = xdp::object(&target);
    let bytes = fs::read(&object).with_context(|| format!("cannot read {}", object.display()))?;
    let sections = elf_section_names(&bytes)
        .with_context(|| format!("{} is not a valid ELF", object.display()))?;
    for wanted in ["xdp", ".maps", ".BTF"] {
        if !sections.iter().any(|s| s == wanted) {
            bail!(
                "{} has no {wanted} section (sections: {})",
                object.display(),
                sections.join(" ")
            );
        }
    }
    println!("XDP object: {}", object.display());
    xdp_check::check(&object)?;
    Ok(object)
}

/// The release proxy binary.
pub fn release() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--release", "-p", "ringwall"]);
    proc::run(&mut cmd)?;
    Ok(target_dir().join("release").join("ringwall"))
}

/// The bench's floor peer (`benches/src/bin/floor.rs`), release.
pub fn floor() -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "ringwall-benches",
        "--bin",
        "ringwall-floor",
    ]);
    proc::run(&mut cmd)?;
    Ok(target_dir().join("release").join("ringwall-floor"))
}

/// The section names of a little-endian ELF64 object: enough to check that the program
/// sections are there without llvm-objdump or bpftool.
pub fn elf_section_names(elf: &[u8]) -> Result<Vec<String>> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a little-endian 64-bit ELF file");
    }
    let shoff = usize::try_from(read_u64(elf, 0x28)?)?;
    let shentsize = usize::from(read_u16(elf, 0x3a)?);
    let shnum = usize::from(read_u16(elf, 0x3c)?);
    let shstrndx = usize::from(read_u16(elf, 0x3e)?);
    let header = |index: usize| -> Result<(usize, usize)> {
        let at = index
            .checked_mul(shentsize)
            .and_then(|offset| offset.checked_add(shoff))
            .context("section header offset overflows")?;
        let name = usize::try_from(read_u32(elf, at)?)?;
        let offset = usize::try_from(read_u64(elf, at + 0x18)?)?;
        Ok((name, offset))
    };
    let (_, strtab) = header(shstrndx)?;
    (0..shnum)
        .map(|index| {
            let (name, _) = header(index)?;
            let start = strtab.checked_add(name).context("name offset overflows")?;
            let rest = elf.get(start..).context("section name out of bounds")?;
            let end = rest
                .iter()
                .position(|&b| b == 0)
                .context("unterminated section name")?;
            Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .collect()
}

fn read_bytes<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    let end = at.checked_add(N).context("offset overflows")?;
    let slice = bytes.get(at..end).context("truncated ELF file")?;
    Ok(slice.try_into()?)
}

fn read_u16(bytes: &[u8], at: usize) -> Result<u16> {
    read_bytes(bytes, at).map(u16::from_le_bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32> {
    read_bytes(bytes, at).map(u32::from_le_bytes)
}

fn read_u64(bytes: &[u8], at: usize) -> Result<u64> {
    read_bytes(bytes, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a null section, `.shstrtab` and the given sections.
    fn elf_with_sections(names: &[&str]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut name_offsets = vec![0u32];
        for name in [".shstrtab"].iter().chain(names) {
            name_offsets.push(u32::try_from(strtab.len()).unwrap());
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
        }
        let strtab_offset = 64u64;
        let shoff = strtab_offset + u64::try_from(strtab.len()).unwrap();
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&u16::try_from(name_offsets.len()).unwrap().to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf.extend_from_slice(&strtab);
        for (index, name) in name_offsets.iter().enumerate() {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            if index == 1 {
                header[0x18..0x20].copy_from_slice(&strtab_offset.to_le_bytes());
            }
            elf.extend_from_slice(&header);
        }
        elf
    }

    #[test]
    fn lists_section_names() {
        let elf = elf_with_sections(&["xdp", "license"]);
        assert_eq!(
            elf_section_names(&elf).unwrap(),
            ["", ".shstrtab", "xdp", "license"]
        );
    }

    #[test]
    fn rejects_what_is_not_elf64() {
        assert!(elf_section_names(b"#!/bin/sh\n").is_err());
        let mut elf = elf_with_sections(&["xdp"]);
        elf.truncate(100);
        assert!(elf_section_names(&elf).is_err());
    }
}
