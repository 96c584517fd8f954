//! `pvmmu`: a hostile Xen PV kernel (a PV kernel, as every SDK guest) that
//! attacks the direct-paging MMU through real hypercalls and prints one line per case,
//! `pvmmu: CASE = RC` (the hypercall's return value, or a grant status), then
//! `pvmmu: done`, and powers off. The cases try to map rxen's frames and its own page
//! tables writably, write Xen's reserved L4 slots and linear entries, abuse pins and
//! base pointers, pass bad `mmu_update` commands and foreign domains, point hypercall
//! arrays at unmapped, non-canonical and read-only memory (rxen's area, the page tables
//! themselves), nest multicalls, and use bad grant refs; then a legitimate sequence
//! (make, pin, link and use a new L1 table, take it apart again; switch to a second L4
//! and back) must succeed and see its data; non-leaf entries are cleared and repointed
//! and their tables reused as Linux does, and the guest must see its current tables. `crates/vmm/tests/pv_hostile.rs` holds the expected value of every case
//! (Xen's errnos, docs/guest-abi.md "Direct-paging MMU").
#![no_std]
#![no_main]

mod attacks;
mod calls;
mod grants;
mod legit;
mod relink;

use rxen_guest::{println, pv, start};

rxen_guest::entry!(main);

/// Frame numbers and addresses the cases use (VIRT_BASE 0, mfn == pfn: a boot-mapped
/// page's frame is its address >> 12).
pub struct Setup {
    pub nr_pages: u64,
    pub l4: u64,
    pub l3: u64,
    pub l2: u64,
    pub first_l1: u64,
    /// Free pages (mapped read-write by the boot tables, used by nothing).
    pub scratch: u64,
}

impl Setup {
    /// Virtual address of scratch page `i` (also its machine address).
    pub fn scratch_va(&self, i: u64) -> u64 {
        self.scratch + i * 4096
    }
    /// Frame of scratch page `i`.
    pub fn scratch_frame(&self, i: u64) -> u64 {
        self.scratch_va(i) >> 12
    }
    /// The first rxen frame that is neither `shared_info` nor a grant frame: the
    /// `syscall` stub (docs/architecture.md "Xen PV guests").
    pub fn rxen_stub_frame(&self) -> u64 {
        self.nr_pages + 1
    }
}

/// Prints one case's result.
pub fn report(case: &str, rc: i64) {
    println!("pvmmu: {case} = {rc}");
}

fn main() {
    let si = start::start_info();
    let (scratch, count) = pv::free_frames();
    let l4 = si.pt_base >> 12;
    let setup = Setup {
        nr_pages: si.nr_pages,
        l4,
        l3: l4 + 1,
        l2: l4 + 2,
        first_l1: l4 + 3,
        scratch,
    };
    println!(
        "pvmmu: nr_pages={:#x} pt_base={:#x} nr_pt_frames={} scratch={scratch:#x} ({count} pages)",
        si.nr_pages, si.pt_base, si.nr_pt_frames
    );
    // The L4's first entry, to check that nothing below changed the tables.
    // SAFETY: pt_base is mapped (read-only) by the boot tables.
    let l4_entry0 = unsafe { core::ptr::read_volatile(si.pt_base as *const u64) };
    attacks::mappings(&setup);
    attacks::table_entries(&setup);
    attacks::pins_and_bases(&setup);
    attacks::commands(&setup);
    attacks::pointers(&setup);
    attacks::multicalls(&setup);
    grants::bad_refs(&setup);
    // SAFETY: as above.
    let after = unsafe { core::ptr::read_volatile(si.pt_base as *const u64) };
    report("tables-intact", i64::from(after == l4_entry0));
    legit::new_l1_table(&setup);
    legit::second_l4(&setup);
    relink::l2_relink(&setup);
    relink::l3_relink(&setup);
    relink::l2_relink_hypervisor_written(&setup);
    println!("pvmmu: done");
}
