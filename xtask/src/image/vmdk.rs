//! streamOptimized VMDK from a raw image, written in Rust the way VMware's own open-vmdk
//! writes them for vSphere (Photon OS's OVAs): header version 3, flags "valid newline
//! detector | compressed grains | embedded LBA" (0x30001), compressAlgorithm 1 (deflate,
//! zlib-wrapped), 64 KiB grains, 512 entries per grain table. Layout by sector: header (0),
//! descriptor (1..21), grain directory, every grain table (empty ones all zero), then the
//! compressed grains (each `{lba: u64, size: u32, zlib data}` padded to a sector), then an
//! end-of-stream marker. Only non-zero grains are stored.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use flate2::write::ZlibEncoder;
use flate2::Compression;

use super::sparse;

const SECTOR: u64 = 512;
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
const GTES_PER_GT: u64 = 512;
const DESC_OFFSET: u64 = 1;
const DESC_SECTORS: u64 = 20;

/// Values of the descriptor that are not the geometry.
pub struct Descriptor<'a> {
    /// The extent file name written in the descriptor (the VMDK's own file name).
    pub file_name: &'a str,
    /// Content ID, fixed for reproducibility (never 0xffffffff / 0xfffffffe).
    pub cid: u32,
    /// 128 bits of long content ID.
    pub long_cid: [u32; 4],
}

fn descriptor(d: &Descriptor, capacity_sectors: u64) -> String {
    let cylinders = (capacity_sectors.div_ceil(255 * 63)).min(65535);
    format!(
        "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID={cid:08x}\nparentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\n\
         # Extent description\nRW {capacity_sectors} SPARSE \"{name}\"\n\n\
         # The Disk Data Base\n#DDB\n\n\
         ddb.longContentID = \"{l0:08x}{l1:08x}{l2:08x}{l3:08x}\"\n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \
         \"255\"\nddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"lsilogic\"\nddb.toolsVersion = \"2147483647\"\n",
        cid = d.cid,
        name = d.file_name,
        l0 = d.long_cid[0],
        l1 = d.long_cid[1],
        l2 = d.long_cid[2],
        l3 = d.long_cid[3],
    )
}

fn header(capacity: u64, gd_offset: u64, overhead: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(&0x564d_444bu32.to_le_bytes()); // "KDMV"
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    h[8..12].copy_from_slice(&0x0003_0001u32.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&DESC_OFFSET.to_le_bytes());
    h[36..44].copy_from_slice(&DESC_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    h[48..56].copy_from_slice(&0u64.to_le_bytes()); // no redundant GD
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&overhead.to_le_bytes());
    h[72] = 0; // clean
    h[73] = b'\n';
    h[74] = b' ';
    h[75] = b'\r';
    h[76] = b'\n';
    h[77..79].copy_from_slice(&1u16.to_le_bytes()); // deflate
    h
}

/// Converts `raw` (size a multiple of 64 KiB) into a streamOptimized VMDK at `out`.
pub fn write(raw: &File, out: &File, d: &Descriptor) -> io::Result<()> {
    let size = raw.metadata()?.len();
    if size % GRAIN != 0 {
        return Err(io::Error::other(format!(
            "raw image size {size} is not a multiple of 64 KiB"
        )));
    }
    let capacity = size / SECTOR;
    let grains = size / GRAIN;
    let gts = grains.div_ceil(GTES_PER_GT);
    let gd_sectors = (gts * 4).div_ceil(SECTOR);
    let gt_sectors = (GTES_PER_GT * 4).div_ceil(SECTOR);
    let gd_offset = DESC_OFFSET + DESC_SECTORS;
    let gt_base = gd_offset + gd_sectors;
    let overhead = gt_base + gts * gt_sectors;

    let mut gt = vec![0u32; (gts * GTES_PER_GT) as usize];
    let mut pos = overhead;
    let mut buf = Vec::with_capacity(GRAIN as usize + 1024);
    sparse::for_each_nonzero_block(raw, GRAIN, |off, data| {
        buf.clear();
        buf.extend_from_slice(&(off / SECTOR).to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
        let mut z = ZlibEncoder::new(std::mem::take(&mut buf), Compression::best());
        z.write_all(data)?;
        buf = z.finish()?;
        let cmp = (buf.len() - 12) as u32;
        buf[8..12].copy_from_slice(&cmp.to_le_bytes());
        buf.resize(
            (buf.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
            0,
        );
        out.write_all_at(&buf, pos * SECTOR)?;
        gt[(off / GRAIN) as usize] = pos as u32;
        pos += buf.len() as u64 / SECTOR;
        Ok(())
    })?;
    if pos > u32::MAX as u64 {
        return Err(io::Error::other(
            "VMDK larger than 2 TiB of compressed data",
        ));
    }
    // End-of-stream marker: an all-zero sector (lba 0, size 0, type 0).
    out.write_all_at(&[0u8; 512], pos * SECTOR)?;

    let mut meta = Vec::with_capacity(((overhead - gd_offset) * SECTOR) as usize);
    for i in 0..gts {
        meta.extend_from_slice(&((gt_base + i * gt_sectors) as u32).to_le_bytes());
    }
    meta.resize((gd_sectors * SECTOR) as usize, 0);
    for e in &gt {
        meta.extend_from_slice(&e.to_le_bytes());
    }
    out.write_all_at(&meta, gd_offset * SECTOR)?;

    let desc = descriptor(d, capacity);
    if desc.len() as u64 > DESC_SECTORS * SECTOR {
        return Err(io::Error::other("VMDK descriptor too long"));
    }
    let mut desc_bytes = desc.into_bytes();
    desc_bytes.resize((DESC_SECTORS * SECTOR) as usize, 0);
    out.write_all_at(&desc_bytes, DESC_OFFSET * SECTOR)?;
    out.write_all_at(&header(capacity, gd_offset, overhead), 0)?;
    out.set_len((pos + 1) * SECTOR)?;
    Ok(())
}
