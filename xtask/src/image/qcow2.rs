//! qcow2 (version 3) from a raw image, written in Rust: 64 KiB clusters, only non-zero
//! clusters allocated, 16-bit refcounts. File order: header, L1 table, refcount table,
//! refcount blocks, L2 tables, data clusters in guest order. Every refcount is 1, so every L1
//! and L2 entry carries QCOW_OFLAG_COPIED, as QEMU itself writes them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

use super::sparse;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
const COPIED: u64 = 1 << 63;
const HEADER_LEN: u32 = 104;

/// Converts `raw` into qcow2, written to `out`.
pub fn write(raw: &File, out: impl Write) -> io::Result<()> {
    let size = raw.metadata()?.len();
    let guest_clusters = size.div_ceil(CLUSTER);
    let mut data = Vec::new();
    sparse::for_each_nonzero_block(raw, CLUSTER, |off, _| {
        data.push(off / CLUSTER);
        Ok(())
    })?;
    let l1_entries = guest_clusters.div_ceil(L2_ENTRIES).max(1);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    let mut l2_used: Vec<u64> = data.iter().map(|c| c / L2_ENTRIES).collect();
    l2_used.dedup();
    let fixed = 1 + l1_clusters + l2_used.len() as u64 + data.len() as u64;
    let (mut rc_blocks, mut rc_table) = (1u64, 1u64);
    loop {
        let total = fixed + rc_blocks + rc_table;
        let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let need_table = (need_blocks * 8).div_ceil(CLUSTER);
        if need_blocks == rc_blocks && need_table == rc_table {
            break;
        }
        (rc_blocks, rc_table) = (need_blocks, need_table);
    }
    let total = fixed + rc_blocks + rc_table;
    let l1_off = CLUSTER;
    let rct_off = l1_off + l1_clusters * CLUSTER;
    let rcb_off = rct_off + rc_table * CLUSTER;
    let l2_off = rcb_off + rc_blocks * CLUSTER;
    let data_off = l2_off + l2_used.len() as u64 * CLUSTER;

    let mut w = BufWriter::with_capacity(1 << 20, out);
    let mut h = Vec::with_capacity(CLUSTER as usize);
    h.extend_from_slice(&0x5146_49fbu32.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&l1_off.to_be_bytes());
    h.extend_from_slice(&rct_off.to_be_bytes());
    h.extend_from_slice(&(rc_table as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes());
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16 bits
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    debug_assert_eq!(h.len(), HEADER_LEN as usize);
    h.extend_from_slice(&[0u8; 8]); // end of header extensions
    h.resize(CLUSTER as usize, 0);
    w.write_all(&h)?;

    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, idx) in l2_used.iter().enumerate() {
        let off = (l2_off + i as u64 * CLUSTER) | COPIED;
        l1[*idx as usize * 8..*idx as usize * 8 + 8].copy_from_slice(&off.to_be_bytes());
    }
    w.write_all(&l1)?;

    let mut rct = vec![0u8; (rc_table * CLUSTER) as usize];
    for i in 0..rc_blocks {
        rct[i as usize * 8..i as usize * 8 + 8]
            .copy_from_slice(&(rcb_off + i * CLUSTER).to_be_bytes());
    }
    w.write_all(&rct)?;

    let mut rcb = vec![0u8; (rc_blocks * CLUSTER) as usize];
    for c in 0..total {
        rcb[c as usize * 2..c as usize * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    w.write_all(&rcb)?;

    let mut next = data_off;
    let mut di = 0;
    for idx in &l2_used {
        let mut l2 = vec![0u8; CLUSTER as usize];
        while di < data.len() && data[di] / L2_ENTRIES == *idx {
            let slot = (data[di] % L2_ENTRIES) as usize;
            l2[slot * 8..slot * 8 + 8].copy_from_slice(&(next | COPIED).to_be_bytes());
            next += CLUSTER;
            di += 1;
        }
        w.write_all(&l2)?;
    }

    let mut buf = vec![0u8; CLUSTER as usize];
    for c in &data {
        buf.fill(0);
        let n = (size - c * CLUSTER).min(CLUSTER) as usize;
        raw.read_exact_at(&mut buf[..n], c * CLUSTER)?;
        w.write_all(&buf)?;
    }
    w.flush()
}
