//! The raw disk: GPT (gpt crate) with a protective MBR carrying GRUB's `boot.img`, three
//! partitions, written as a sparse file:
//!
//! | # | label        | type           | start    | size                      |
//! |---|--------------|----------------|----------|---------------------------|
//! | 1 | `bios-boot`  | BIOS boot      | 1 MiB    | 1 MiB: GRUB's core.img    |
//! | 2 | `axion-esp`  | EFI system     | 2 MiB    | the ESP image             |
//! | 3 | `axion-data` | Linux file sys | after it | the profile's data-size   |
//!
//! and 1 MiB at the end (backup GPT). Disk and partition GUIDs are derived from the profile
//! name, so the same profile always gives the same table.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use gpt::partition::Partition;
use gpt::partition_types;

use super::{grub, sparse};

pub const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;
pub const BIOS_BOOT_LBA: u64 = 2048;
pub const ESP_LBA: u64 = 4096;

/// Deterministic GUIDs for one disk.
#[derive(Debug, Clone, Copy)]
pub struct Guids {
    pub disk: uuid::Uuid,
    pub bios: uuid::Uuid,
    pub esp: uuid::Uuid,
    pub data: uuid::Uuid,
}

/// What goes on the disk.
pub struct Contents<'a> {
    /// GRUB's i386-pc core.img (unpatched).
    pub core_img: &'a [u8],
    /// The FAT image of the ESP (a multiple of 1 MiB).
    pub esp: &'a [u8],
    /// The ext4 image of the data partition (a sparse file, a multiple of 1 MiB).
    pub data: &'a Path,
}

/// Writes the raw disk image to `path` (created; must not exist).
pub fn write(path: &Path, c: &Contents, guids: Guids) -> Result<()> {
    let data = File::open(c.data).with_context(|| format!("cannot open {}", c.data.display()))?;
    let data_len = data.metadata()?.len();
    let esp_sectors = (c.esp.len() as u64).div_ceil(SECTOR);
    let data_lba = ESP_LBA + esp_sectors.div_ceil(2048) * 2048;
    let data_sectors = data_len.div_ceil(SECTOR);
    let total = (data_lba + data_sectors + 2048) * SECTOR;

    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.set_len(total)?;

    let mut core = c.core_img.to_vec();
    grub::patch_core_blocklist(&mut core, BIOS_BOOT_LBA)?;
    if core.len() as u64 > MIB {
        anyhow::bail!(
            "GRUB core.img is {} bytes, more than the 1 MiB BIOS boot partition",
            core.len()
        );
    }
    file.write_all_at(&core, BIOS_BOOT_LBA * SECTOR)?;
    sparse::copy_into(&file, ESP_LBA * SECTOR, c.esp)?;
    sparse::copy_file_into(&file, data_lba * SECTOR, &data)
        .with_context(|| format!("cannot copy {} into {}", c.data.display(), path.display()))?;

    let mut parts = BTreeMap::new();
    let part = |name: &str, t: partition_types::Type, guid, first: u64, len: u64| Partition {
        part_type_guid: t,
        part_guid: guid,
        first_lba: first,
        last_lba: first + len - 1,
        flags: 0,
        name: name.to_owned(),
    };
    parts.insert(
        1,
        part(
            "bios-boot",
            partition_types::BIOS,
            guids.bios,
            BIOS_BOOT_LBA,
            2048,
        ),
    );
    parts.insert(
        2,
        part(
            "axion-esp",
            partition_types::EFI,
            guids.esp,
            ESP_LBA,
            esp_sectors,
        ),
    );
    parts.insert(
        3,
        part(
            super::data::LABEL,
            partition_types::LINUX_FS,
            guids.data,
            data_lba,
            data_sectors,
        ),
    );

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(guids.disk))
        .with_context(|| format!("{}: cannot start a GPT", path.display()))?;
    disk.update_partitions(parts)
        .with_context(|| format!("{}: bad partition table", path.display()))?;
    let mut file = disk
        .write()
        .with_context(|| format!("{}: cannot write the GPT", path.display()))?;

    let mut mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.set_bootcode(grub::mbr_boot_code(BIOS_BOOT_LBA)?);
    mbr.overwrite_lba0(&mut file)
        .with_context(|| format!("{}: cannot write the MBR", path.display()))?;
    file.sync_all()?;
    Ok(())
}
