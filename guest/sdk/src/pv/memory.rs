//! A PV kernel's memory at boot: the P2M (`start_info.mfn_list`) for machine frames,
//! and mapping the RAM the boot tables leave out.
//!
//! Xen's boot tables map only up to its mapping end (kernel, tables, boot stack and at
//! least 512 KiB of padding). [`map_all_ram`] maps every other page of the domain's
//! RAM at its pseudo-physical address (`VIRT_BASE` 0): it takes new page tables from
//! the top of RAM (cleared and pinned with one `mmuext_op`, filled with one
//! `mmu_update` per table, linked with one more), maps those table frames read-only
//! and everything else read-write. It never reads the M2P (each read traps to the
//! VMM): the boot tables are recognised by their machine frames in the P2M, and the
//! new ones are recorded here.

use rxen_abi::mmu::{
    MmuUpdate, MmuextOp, MMUEXT_CLEAR_PAGE, MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE,
    MMU_NORMAL_PT_UPDATE,
};
use rxen_abi::xen::StartInfo;
use rxen_abi::PAGE_SIZE;

use crate::hypercall::{mmu_update, mmuext_op, Errno};

const P: u64 = 1;
const RW: u64 = 2;
const U: u64 = 4;
const A: u64 = 0x20;
const D: u64 = 0x40;
/// Flags of an L2/L3/L4 entry linking a table (Xen's `_PAGE_TABLE`).
pub(crate) const TABLE_FLAGS: u64 = P | RW | U | A | D;
/// Flags of a read-write L1 entry of kernel memory.
pub(crate) const PAGE_RW: u64 = P | RW | A | D;
/// Flags of a read-only L1 entry (page-table frames).
const PAGE_RO: u64 = P | A;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const ENTRIES: u64 = 512;
/// Bytes one L1 table maps.
const L1_SPAN: u64 = ENTRIES * PAGE_SIZE;
/// Bytes one L2 table maps.
const L2_SPAN: u64 = ENTRIES * L1_SPAN;

/// Machine frame of pseudo-physical frame `pfn` (the P2M's entry).
pub fn mfn_of_pfn(pfn: u64) -> u64 {
    let si = crate::start::start_info();
    if pfn >= si.nr_pages {
        return u64::MAX;
    }
    // SAFETY: the P2M (`nr_pages` entries at `mfn_list`) is mapped by the boot tables
    // for the life of the domain; `pfn` is in range.
    unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add(pfn as usize)) }
}

/// Pseudo-physical frame of machine frame `mfn`, looked up in the P2M (`hint` first),
/// never in the M2P.
pub fn pfn_of_mfn(mfn: u64, hint: u64) -> Option<u64> {
    if mfn_of_pfn(hint) == mfn {
        return Some(hint);
    }
    (0..crate::start::start_info().nr_pages).find(|&p| mfn_of_pfn(p) == mfn)
}

/// Reads entry `i` of the table mapped (read-only) at virtual address `table_va`.
fn entry(table_va: u64, i: u64) -> u64 {
    // SAFETY: boot page tables are mapped read-only for the life of the domain; i < 512.
    unsafe { core::ptr::read_volatile((table_va as *const u64).add((i % ENTRIES) as usize)) }
}

/// Virtual address of the boot table whose machine frame is `mfn`.
fn boot_table_va(si: &StartInfo, mfn: u64) -> Option<u64> {
    let first = si.pt_base / PAGE_SIZE;
    (first..first + si.nr_pt_frames)
        .find(|&p| mfn_of_pfn(p) == mfn)
        .map(|p| p * PAGE_SIZE)
}

/// The L2 of one GiB of RAM: a boot table (readable) or one made here (empty).
#[derive(Clone, Copy)]
enum L2 {
    Boot { va: u64, mfn: u64 },
    New { pfn: u64 },
}

/// The tables [`map_all_ram`] made: pfns `[first, first + count)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NewTables {
    pub first: u64,
    pub count: u64,
}

/// Maps every page of RAM that the boot tables leave unmapped; returns the frames it
/// used for the new tables (at the top of RAM, so RAM below them stays contiguous).
pub(crate) fn map_all_ram(si: &StartInfo) -> Result<NewTables, Errno> {
    let ram = si.nr_pages * PAGE_SIZE;
    let l4_va = si.pt_base;
    let l3_entry = entry(l4_va, 0);
    let einval = Errno(rxen_abi::errno::EINVAL);
    let l3_va = boot_table_va(si, (l3_entry & ADDR_MASK) / PAGE_SIZE)
        .filter(|_| l3_entry & P != 0)
        .ok_or(einval)?;
    let gibs = ram.div_ceil(L2_SPAN);
    if gibs > ENTRIES {
        return Err(einval);
    }
    // Count what is missing: L2s for whole GiBs, L1s for 2 MiB regions.
    let boot_l2 = |g: u64| -> Option<(u64, u64)> {
        let e = entry(l3_va, g);
        if e & P == 0 {
            return None;
        }
        let mfn = (e & ADDR_MASK) / PAGE_SIZE;
        boot_table_va(si, mfn).map(|va| (va, mfn))
    };
    let regions = ram.div_ceil(L1_SPAN);
    let missing_l1 = |r: u64| match boot_l2(r / ENTRIES) {
        Some((va, _)) => entry(va, r % ENTRIES) & P == 0,
        None => true,
    };
    let new_l2s = (0..gibs).filter(|&g| boot_l2(g).is_none()).count() as u64;
    let new_l1s = (0..regions).filter(|&r| missing_l1(r)).count() as u64;
    let count = new_l2s + new_l1s;
    if count == 0 {
        return Ok(NewTables {
            first: si.nr_pages,
            count: 0,
        });
    }
    let first = si.nr_pages.checked_sub(count).ok_or(einval)?;
    // The new tables must lie where no boot mapping reaches (else pinning fails).
    if !(first * PAGE_SIZE..ram)
        .step_by(L1_SPAN as usize)
        .all(|va| missing_l1(va / L1_SPAN))
    {
        return Err(einval);
    }
    let is_table = |pfn: u64| pfn >= first && pfn < si.nr_pages;
    // Table pfn of each missing L2 and L1, in order: L2s, then L1s.
    let l2_of = |g: u64| -> L2 {
        match boot_l2(g) {
            Some((va, mfn)) => L2::Boot { va, mfn },
            None => L2::New {
                pfn: first + (0..g).filter(|&x| boot_l2(x).is_none()).count() as u64,
            },
        }
    };

    // Clear and pin every new table (L1s first: an L2 pins empty either way).
    let mut ops = [MmuextOp::default(); 64];
    let mut n = 0;
    let flush_ops = |ops: &mut [MmuextOp; 64], n: &mut usize| -> Result<(), Errno> {
        let r = mmuext_op(&ops[..*n]);
        *n = 0;
        r
    };
    for i in 0..count {
        let pfn = first + i;
        let mfn = mfn_of_pfn(pfn);
        let pin = if i < new_l2s {
            MMUEXT_PIN_L2_TABLE
        } else {
            MMUEXT_PIN_L1_TABLE
        };
        for cmd in [MMUEXT_CLEAR_PAGE, pin] {
            ops[n] = MmuextOp {
                cmd,
                pad: 0,
                arg1: mfn,
                arg2: 0,
            };
            n += 1;
        }
        if n == ops.len() {
            flush_ops(&mut ops, &mut n)?;
        }
    }
    if n > 0 {
        flush_ops(&mut ops, &mut n)?;
    }

    // Fill each new L1 (one mmu_update per table), then link L1s and L2s.
    let mut reqs = [MmuUpdate::default(); ENTRIES as usize];
    let mut next_l1 = first + new_l2s;
    let mut links = Links {
        reqs: [MmuUpdate::default(); 64],
        n: 0,
    };
    for g in 0..gibs {
        let l2 = l2_of(g);
        let l2_mfn = match l2 {
            L2::Boot { mfn, .. } => mfn,
            L2::New { pfn } => {
                let l3_mfn = (l3_entry & ADDR_MASK) / PAGE_SIZE;
                links.push(
                    l3_mfn * PAGE_SIZE + g * 8,
                    (mfn_of_pfn(pfn) * PAGE_SIZE) | TABLE_FLAGS,
                )?;
                mfn_of_pfn(pfn)
            }
        };
        for slot in 0..ENTRIES {
            let r = g * ENTRIES + slot;
            if r >= regions {
                break;
            }
            if let L2::Boot { va, .. } = l2 {
                if entry(va, slot) & P != 0 {
                    continue;
                }
            }
            let l1_mfn = mfn_of_pfn(next_l1);
            next_l1 += 1;
            let mut k = 0;
            for j in 0..ENTRIES {
                let pfn = r * ENTRIES + j;
                if pfn >= si.nr_pages {
                    break;
                }
                let flags = if is_table(pfn) { PAGE_RO } else { PAGE_RW };
                reqs[k] = MmuUpdate {
                    ptr: (l1_mfn * PAGE_SIZE + j * 8) | MMU_NORMAL_PT_UPDATE,
                    val: (mfn_of_pfn(pfn) * PAGE_SIZE) | flags,
                };
                k += 1;
            }
            mmu_update(&reqs[..k])?;
            links.push(
                l2_mfn * PAGE_SIZE + slot * 8,
                (l1_mfn * PAGE_SIZE) | TABLE_FLAGS,
            )?;
        }
    }
    links.flush()?;
    Ok(NewTables { first, count })
}

/// Table links (`mmu_update` requests) sent in batches of 64.
struct Links {
    reqs: [MmuUpdate; 64],
    n: usize,
}

impl Links {
    fn push(&mut self, entry_maddr: u64, val: u64) -> Result<(), Errno> {
        if self.n == self.reqs.len() {
            self.flush()?;
        }
        self.reqs[self.n] = MmuUpdate {
            ptr: entry_maddr | MMU_NORMAL_PT_UPDATE,
            val,
        };
        self.n += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Errno> {
        let n = core::mem::take(&mut self.n);
        if n == 0 {
            return Ok(());
        }
        mmu_update(&self.reqs[..n])
    }
}
