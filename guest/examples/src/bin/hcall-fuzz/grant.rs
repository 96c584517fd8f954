//! Random `grant_table_op` sub-operations and `XENMEM_add_to_physmap` calls for the
//! fuzzer. The arguments are random, but every place the hypervisor may *write* on the
//! guest's behalf is chosen so that a success cannot wreck the fuzzer itself: copy
//! destinations (frames, and the frames of its own grant entries) are its target pages
//! or frames the hypervisor must refuse, `setup_table` lists go to a buffer of their
//! own, and grant frames are placed only on the fuzzer's table pages.

use rxen_guest::abi::grant_table::*;
use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::memory::XENMEM_ADD_TO_PHYSMAP;
use rxen_guest::abi::{layout, DOMID_SELF, PAGE_SIZE};
use rxen_guest::hypercall::hypercall3;
use rxen_guest::start;
use rxen_workloads::XorShift;

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// Pages that may hold grant frames (and nothing else).
static mut TABLE_PAGES: [Page; 2] = [const { Page([0; PAGE_SIZE as usize]) }; 2];
/// Pages that copies may write (and nothing else uses).
static mut TARGET_PAGES: [Page; 3] = [const { Page([0; PAGE_SIZE as usize]) }; 3];
/// Where `setup_table` may write its frame list (64 frames at most).
static mut FRAME_LIST: [u64; 64] = [0; 64];
/// The argument array of one call: up to 8 copies (40 bytes each), fewer of others.
static mut ARGS: [u64; 64] = [0; 64];

fn pfn_of<T>(p: *const T) -> u64 {
    // Identity-mapped: the pfn is the address shifted.
    p as u64 >> 12
}

fn table_pfn(i: u64) -> u64 {
    pfn_of(core::ptr::addr_of!(TABLE_PAGES)) + i % 2
}

fn target_pfn(i: u64) -> u64 {
    pfn_of(core::ptr::addr_of!(TARGET_PAGES)) + i % 3
}

/// A frame a copy or a grant entry may name as a destination: a target page, or one
/// the hypervisor must refuse (beyond RAM, unmapped, read-only, absurd).
fn dest_frame(r: &mut XorShift) -> u64 {
    let x = r.next_u64();
    let ram_pages = start::start_info().nr_pages;
    match x % 9 {
        0 => ram_pages + x % 1000,
        1 => 0,
        2 => layout::PAGE_TABLES >> 12,
        3 => layout::HYPERCALL_PAGE >> 12,
        4 => layout::SYSCALL_STUB >> 12,
        5 => (layout::PAGE_TABLES_END >> 12) + x % 16,
        6 => (1 << 40) | x,
        _ => target_pfn(x),
    }
}

/// A grant reference: mostly within the first frames, sometimes anything.
fn gref(r: &mut XorShift) -> u64 {
    let x = r.next_u64();
    match x % 4 {
        0 => x,
        1 => x as u32 as u64,
        _ => x % 1100,
    }
}

fn domid(r: &mut XorShift) -> u16 {
    let x = r.next_u64();
    match x % 5 {
        0 => 0,
        1 => 1,
        2 => x as u16,
        _ => DOMID_SELF,
    }
}

fn small(r: &mut XorShift, max: u64) -> u64 {
    let x = r.next_u64();
    match x % 4 {
        0 => x,
        1 => u64::MAX - x % 4,
        _ => x % max,
    }
}

/// Writes a random entry into one of the table pages: random flags and domid, a frame
/// from [`dest_frame`] (so a copy to it cannot hit anything that matters).
fn scribble_entry(r: &mut XorShift) {
    let x = r.next_u64();
    let slot = (x >> 8) % u64::from(GRANT_ENTRIES_PER_FRAME_V1);
    let at = (table_pfn(x) * PAGE_SIZE + slot * GRANT_ENTRY_V1_SIZE) as *mut u32;
    let flags = match x % 3 {
        0 => r.next_u64() as u16,
        _ => GTF_PERMIT_ACCESS | (r.next_u64() as u16 & GTF_READONLY),
    };
    let word = u32::from(flags) | (u32::from(domid(r)) << 16);
    let frame = dest_frame(r) as u32;
    // SAFETY: `at` is an 8-byte-aligned entry inside TABLE_PAGES, which hold nothing
    // but grant entries; the hypervisor updates the flag word atomically, so it is
    // written with one volatile 32-bit store.
    unsafe {
        at.add(1).write_volatile(frame);
        at.write_volatile(word);
    }
}

fn args() -> *mut u64 {
    core::ptr::addr_of_mut!(ARGS).cast()
}

fn set(i: usize, v: u64) {
    // SAFETY: `i` < 64 at every call site (fields of at most 8 copies, 5 words each).
    unsafe { args().add(i).write_volatile(v) };
}

/// A `gnttab_copy_ptr` whose writes (as a destination) are safe.
fn copy_side(r: &mut XorShift, by_gref: bool, is_dest: bool) -> (u64, u64) {
    let u = if by_gref {
        gref(r)
    } else if is_dest {
        dest_frame(r)
    } else {
        r.next_u64() % (start::start_info().nr_pages + 16)
    };
    let x = r.next_u64();
    let offset = match x % 4 {
        0 => x >> 16,
        1 => 4000 + (x >> 16) % 200,
        _ => (x >> 16) % PAGE_SIZE,
    } as u16;
    (u, u64::from(domid(r)) | (u64::from(offset) << 16))
}

/// Fills ARGS with `count` copies (at most 8; larger batches are cut to 8 or refused).
fn fill_copies(r: &mut XorShift, count: u64) {
    for i in 0..count.min(8) as usize {
        let flags = (r.next_u64() & 0xffff) as u16;
        let flags = if r.next_u64().is_multiple_of(2) {
            flags & (GNTCOPY_SOURCE_GREF | GNTCOPY_DEST_GREF)
        } else {
            flags
        };
        let (su, sd) = copy_side(r, flags & GNTCOPY_SOURCE_GREF != 0, false);
        let (du, dd) = copy_side(r, flags & GNTCOPY_DEST_GREF != 0, true);
        let x = r.next_u64();
        let len = match x % 4 {
            0 => x >> 32,
            _ => (x >> 32) % 600,
        } as u16;
        let base = i * 5;
        set(base, su);
        set(base + 1, sd);
        set(base + 2, du);
        set(base + 3, dd);
        set(base + 4, u64::from(len) | (u64::from(flags) << 16));
    }
}

/// The argument pointer: mostly ARGS, sometimes one the hypervisor must refuse.
fn arg_pointer(r: &mut XorShift) -> u64 {
    let x = r.next_u64();
    match x % 10 {
        0 => 0,
        1 => x | (1 << 63),
        2 => layout::PAGE_TABLES + x % 0x1000,
        3 => layout::HYPERCALL_PAGE + x % 0x1000,
        4 => layout::SYSCALL_STUB + x % 0x1000,
        _ => args() as u64,
    }
}

/// Places grant frame 0 on the first table page, as a guest using grants does first.
pub fn init() {
    let mut ap = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx: 0,
        gpfn: table_pfn(0),
    };
    // The fuzzer goes on whatever the answer: the calls must be survived either way.
    let _ = rxen_guest::hypercall::memory_op(XENMEM_ADD_TO_PHYSMAP, &mut ap);
}

/// One random `grant_table_op`; returns the hypercall's result.
pub fn grant_table_op(r: &mut XorShift) -> i64 {
    if r.next_u64().is_multiple_of(4) {
        scribble_entry(r);
    }
    let cmd = r.next_u64() % 14;
    let x = r.next_u64();
    let count = match x % 8 {
        0 => 0,
        1 => x >> 8,
        2 => 513,
        3 => 2 + (x >> 8) % 7,
        _ => 1,
    };
    for i in 0..64 {
        set(i, r.next_u64());
    }
    match cmd {
        GNTTABOP_SETUP_TABLE => {
            let list = match r.next_u64() % 4 {
                0 => arg_pointer(r),
                _ => core::ptr::addr_of_mut!(FRAME_LIST) as u64,
            };
            set(0, u64::from(domid(r)) | (small(r, 70) << 32));
            set(2, list);
        }
        GNTTABOP_COPY => fill_copies(r, count),
        GNTTABOP_QUERY_SIZE | GNTTABOP_GET_VERSION => set(0, u64::from(domid(r))),
        GNTTABOP_SET_VERSION => set(0, small(r, 4)),
        GNTTABOP_MAP_GRANT_REF => {
            for i in 0..count.min(12) as usize {
                set(i * 4 + 1, small(r, 32) | (gref(r) << 32));
                set(i * 4 + 2, u64::from(domid(r)));
            }
        }
        _ => {}
    }
    // Batches the hypervisor accepts (at most 512) must lie within ARGS, where it
    // writes their statuses; copies only as far as they were built (8).
    let fits = match cmd {
        GNTTABOP_COPY => 8,
        GNTTABOP_MAP_GRANT_REF => 16,
        GNTTABOP_UNMAP_GRANT_REF => 21,
        _ => u64::MAX,
    };
    let count = if count <= 512 { count.min(fits) } else { count };
    let ptr = arg_pointer(r);
    // SAFETY: every guest address the hypervisor may write through is ARGS,
    // FRAME_LIST, TABLE_PAGES or TARGET_PAGES, or one it must refuse.
    unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd, ptr, count) }
}

/// One random `XENMEM_add_to_physmap`; grant frames land only on the table pages.
pub fn add_to_physmap(r: &mut XorShift) -> i64 {
    let x = r.next_u64();
    let idx = match x % 6 {
        0 => XENMAPIDX_GRANT_TABLE_STATUS | ((x >> 32) % 4),
        1 => x >> 8,
        2 => 64 + (x >> 8) % 4,
        _ => (x >> 8) % 4,
    };
    let y = r.next_u64();
    let gpfn = match y % 6 {
        0 => dest_frame(r),
        1 => y | (1 << 40),
        _ => table_pfn(y >> 8),
    };
    let space = match r.next_u64() % 4 {
        0 => r.next_u64() % 8,
        _ => u64::from(XENMAPSPACE_GRANT_TABLE),
    };
    // A target page named as gpfn (by dest_frame) would become a grant frame; only
    // table pages may: the grant-table space then gets a table page instead.
    let gpfn = if space == u64::from(XENMAPSPACE_GRANT_TABLE)
        && (target_pfn(0)..target_pfn(0) + 3).contains(&gpfn)
    {
        table_pfn(gpfn)
    } else {
        gpfn
    };
    set(
        0,
        u64::from(domid(r)) | ((r.next_u64() & 0xffff) << 16) | (space << 32),
    );
    set(1, idx);
    set(2, gpfn);
    let ptr = arg_pointer(r);
    // SAFETY: the hypervisor reads ARGS (or refuses the pointer); it writes only
    // the table page named, which holds nothing but grant entries.
    unsafe { hypercall3(nr::MEMORY_OP, XENMEM_ADD_TO_PHYSMAP, ptr, 0) }
}
