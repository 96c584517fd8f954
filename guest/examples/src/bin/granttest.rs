//! Grant-table guest for the VMM's integration tests: places its grant table with the
//! SDK, fills a page with a known pattern (byte `i` = `pattern(i)`) and grants it to
//! domain 0 read-only (ref 8), grants a zeroed page read-write (ref 9), prints
//! `granttest: ro ref=8 pfn=0x.. rw ref=9 pfn=0x..` and `granttest: ready`, then
//! obeys console-input lines until told to power off:
//!
//! * `show`: prints `granttest: rw page: "TEXT"` (the read-write page up to its first
//!   NUL, at most 64 bytes, non-printable bytes as `?`);
//! * `end N`: ends access through ref N, printing `granttest: end_access(N): ok` or
//!   `busy` (domain 0 still maps it);
//! * `off`: prints `granttest: goodbye` and powers off.
//!
//! With `hostile` on the command line it first fills entries with garbage for domain 0
//! to map (refs 20..=28, see [`HOSTILE_REFS`]) and makes bad grant hypercalls itself,
//! printing `granttest: CASE: rc=RC status=S` for each (Xen's `GNTST_*`), then
//! `granttest: hostile done`, and serves as above.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use rxen_guest::abi::grant_table::*;
use rxen_guest::abi::hypercall as nr;
use rxen_guest::abi::memory::XENMEM_ADD_TO_PHYSMAP;
use rxen_guest::abi::{layout, DOMID_SELF, PAGE_SIZE};
use rxen_guest::grant::{EndAccessError, GrantTable};
use rxen_guest::hypercall::hypercall3;
use rxen_guest::{events, println, start};

rxen_guest::entry!(main);

/// The read-only grant (patterned page).
const RO_REF: u32 = 8;
/// The read-write grant (zeroed page).
const RW_REF: u32 = 9;

/// Garbage entries of `hostile` mode, `(ref, what)`; the test knows the same list.
const HOSTILE_REFS: &[(u32, &str)] = &[
    (20, "accept-transfer type"),
    (21, "granted to domain 7"),
    (22, "sub-page flag"),
    (23, "frame beyond RAM"),
    (24, "the grant frame itself"),
    (25, "page-table frame (read-only RAM)"),
    (26, "null frame"),
    (27, "all flag bits"),
    (
        28,
        "hypercall page (rxen's syscall stub frame for a PV kernel)",
    ),
];

#[repr(C, align(4096))]
struct Page([u8; PAGE_SIZE as usize]);

/// 0: grant table, 1: read-only grant, 2: read-write grant, 3: copy scratch.
static mut PAGES: [Page; 4] = [const { Page([0; PAGE_SIZE as usize]) }; 4];

/// Byte `i` of the read-only page.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(1) % 251) as u8
}

fn pfn(i: usize) -> u64 {
    // Identity-mapped: the pfn is the address shifted.
    (core::ptr::addr_of!(PAGES) as u64 >> 12) + i as u64
}

fn page_ptr(i: usize) -> *mut u8 {
    (pfn(i) << 12) as *mut u8
}

/// Writes a raw entry word (flags | domid << 16) and frame, garbage included.
fn raw_entry(gref: u32, flags: u16, domid: u16, frame: u32) {
    let at = page_ptr(0).wrapping_add((gref % GRANT_ENTRIES_PER_FRAME_V1) as usize * 8);
    // SAFETY: `at` lies in page 0 (the grant table frame this guest owns), 8-byte
    // aligned; the flags word is shared with the VMM and written atomically.
    unsafe {
        at.add(4).cast::<u32>().write_volatile(frame);
        (*at.cast::<AtomicU32>()).store(
            u32::from(flags) | (u32::from(domid) << 16),
            Ordering::Release,
        );
    }
}

fn gnttab_op<T>(cmd: u64, arg: *mut T, count: u64) -> i64 {
    // SAFETY: the argument is this guest's memory (or a deliberately bad pointer the
    // hypervisor must refuse without writing anywhere else).
    unsafe { hypercall3(nr::GRANT_TABLE_OP, cmd, arg as u64, count) }
}

fn setup_case(name: &str, dom: u16, nr_frames: u32, frame_list: u64) {
    let mut st = GnttabSetupTable {
        dom,
        nr_frames,
        frame_list,
        status: 99,
        ..Default::default()
    };
    let rc = gnttab_op(GNTTABOP_SETUP_TABLE, &mut st, 1);
    println!("granttest: {name}: rc={rc} status={}", st.status);
}

fn copy_case(name: &str, mut c: GnttabCopy) {
    c.status = 99;
    let rc = gnttab_op(GNTTABOP_COPY, &mut c, 1);
    println!("granttest: {name}: rc={rc} status={}", c.status);
}

fn frame_side(frame: u64, offset: u16) -> GnttabCopyPtr {
    GnttabCopyPtr {
        u: frame,
        domid: DOMID_SELF,
        offset,
        ..Default::default()
    }
}

fn physmap_case(name: &str, idx: u64, gpfn: u64) {
    let mut ap = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx,
        gpfn,
    };
    // SAFETY: `ap` is this guest's memory.
    let rc = unsafe {
        hypercall3(
            nr::MEMORY_OP,
            XENMEM_ADD_TO_PHYSMAP,
            &mut ap as *mut _ as u64,
            0,
        )
    };
    println!("granttest: {name}: rc={rc}");
}

fn hostile() {
    let ram_pages = start::start_info().nr_pages;
    let ro = pfn(1) as u32;
    // Frames the guest cannot write: its page tables, and rxen's hypercall page (on
    // rxen's layout) or `syscall` stub (after `shared_info` in rxen's area, PV).
    let (pt, hc) = if start::is_pv() {
        let si = start::start_info();
        let pt = rxen_guest::pv::memory::mfn_of_pfn(si.pt_base >> 12);
        (pt as u32, (ram_pages + 1) as u32)
    } else {
        (
            (layout::PAGE_TABLES >> 12) as u32,
            (layout::HYPERCALL_PAGE >> 12) as u32,
        )
    };
    raw_entry(20, GTF_ACCEPT_TRANSFER, 0, ro);
    raw_entry(21, GTF_PERMIT_ACCESS, 7, ro);
    raw_entry(22, GTF_PERMIT_ACCESS | GTF_SUB_PAGE, 0, ro);
    raw_entry(23, GTF_PERMIT_ACCESS, 0, (ram_pages + 100) as u32);
    raw_entry(24, GTF_PERMIT_ACCESS, 0, pfn(0) as u32);
    raw_entry(25, GTF_PERMIT_ACCESS, 0, pt);
    raw_entry(26, GTF_PERMIT_ACCESS, 0, 0);
    raw_entry(27, 0xffff, 0, ro);
    raw_entry(28, GTF_PERMIT_ACCESS, 0, hc);
    for (r, what) in HOSTILE_REFS {
        println!("granttest: garbage ref {r}: {what}");
    }

    let mut list = [0u64; 4];
    let list_ptr = list.as_mut_ptr() as u64;
    setup_case("setup 65 frames", DOMID_SELF, 65, list_ptr);
    setup_case("setup u32::MAX frames", DOMID_SELF, u32::MAX, list_ptr);
    setup_case("setup null frame list", DOMID_SELF, 1, 0);
    setup_case("setup other domain", 5, 1, list_ptr);

    let scratch = pfn(3);
    let copy = |src: GnttabCopyPtr, dest: GnttabCopyPtr, len: u16, flags: u16| GnttabCopy {
        source: src,
        dest,
        len,
        flags,
        ..Default::default()
    };
    copy_case(
        "copy own frames",
        copy(frame_side(pfn(1), 0), frame_side(scratch, 0), 64, 0),
    );
    copy_case(
        "copy across the page",
        copy(frame_side(pfn(1), 4000), frame_side(scratch, 0), 200, 0),
    );
    copy_case(
        "copy to a frame beyond RAM",
        copy(frame_side(pfn(1), 0), frame_side(ram_pages + 100, 0), 8, 0),
    );
    copy_case(
        "copy to the page tables",
        copy(frame_side(pfn(1), 0), frame_side(u64::from(pt), 0), 8, 0),
    );
    let mut foreign = frame_side(pfn(1), 0);
    foreign.domid = 0;
    copy_case(
        "copy from domain 0's frame",
        copy(foreign, frame_side(scratch, 0), 8, 0),
    );
    let mut gref0 = frame_side(u64::from(RO_REF), 0);
    gref0.domid = 0;
    copy_case(
        "copy from a grant of domain 0",
        copy(gref0, frame_side(scratch, 0), 8, GNTCOPY_SOURCE_GREF),
    );
    copy_case(
        "copy from grant ref 99999",
        copy(
            frame_side(99_999, 0),
            frame_side(scratch, 0),
            8,
            GNTCOPY_SOURCE_GREF,
        ),
    );
    copy_case(
        "copy from a grant for domain 0",
        copy(
            frame_side(u64::from(RO_REF), 0),
            frame_side(scratch, 0),
            8,
            GNTCOPY_SOURCE_GREF,
        ),
    );
    let rc = gnttab_op(GNTTABOP_COPY, core::ptr::null_mut::<GnttabCopy>(), 1);
    println!("granttest: copy null pointer: rc={rc}");
    let mut batch = [GnttabCopy::default(); 2];
    let rc = gnttab_op(GNTTABOP_COPY, batch.as_mut_ptr(), 513);
    println!("granttest: copy 513 ops: rc={rc}");

    let mut map = GnttabMapGrantRef {
        flags: GNTMAP_HOST_MAP,
        r#ref: RO_REF,
        dom: 0,
        status: 99,
        ..Default::default()
    };
    let rc = gnttab_op(GNTTABOP_MAP_GRANT_REF, &mut map, 1);
    println!(
        "granttest: map from domain 0: rc={rc} status={}",
        map.status
    );
    let mut unmap = GnttabUnmapGrantRef {
        handle: 0,
        status: 99,
        ..Default::default()
    };
    let rc = gnttab_op(GNTTABOP_UNMAP_GRANT_REF, &mut unmap, 1);
    println!("granttest: unmap handle 0: rc={rc} status={}", unmap.status);
    let mut v = GnttabSetVersion { version: 2 };
    let rc = gnttab_op(GNTTABOP_SET_VERSION, &mut v, 1);
    println!("granttest: set_version 2: rc={rc} version={}", v.version);
    let rc = gnttab_op(GNTTABOP_TRANSFER, &mut map, 1);
    println!("granttest: transfer: rc={rc}");

    physmap_case("physmap frame 64", 64, scratch);
    physmap_case(
        "physmap status frame",
        XENMAPIDX_GRANT_TABLE_STATUS,
        scratch,
    );
    physmap_case("physmap beyond RAM", 1, ram_pages + 100);
    physmap_case("physmap low memory", 1, 0x10);
    physmap_case("physmap onto frame 0", 1, pfn(0));
    println!("granttest: hostile done");
}

/// Console input collected by the event handler, consumed line by line by `main`.
static INPUT: spin::Mutex<([u8; 256], usize)> = spin::Mutex::new(([0; 256], 0));

fn on_console(_: events::Port) {
    let mut input = INPUT.lock();
    let (buf, len) = &mut *input;
    let n = rxen_guest::console::read(&mut buf[*len..]);
    *len += n;
    if *len == buf.len() && !buf.contains(&b'\n') {
        *len = 0; // an overlong line: drop it
    }
}

fn next_line(out: &mut [u8; 256]) -> Option<usize> {
    let mut input = INPUT.lock();
    let (buf, len) = &mut *input;
    let end = buf[..*len].iter().position(|&c| c == b'\n')?;
    out[..end].copy_from_slice(&buf[..end]);
    buf.copy_within(end + 1..*len, 0);
    *len -= end + 1;
    Some(end)
}

fn show_rw() {
    let mut text = [b'?'; 64];
    let mut n = 0;
    while n < text.len() {
        // SAFETY: page 2 is this guest's page; domain 0 writes it concurrently, so it
        // is read with volatile byte loads.
        let b = unsafe { page_ptr(2).add(n).read_volatile() };
        if b == 0 {
            break;
        }
        if b.is_ascii_graphic() || b == b' ' {
            text[n] = b;
        }
        n += 1;
    }
    let s = core::str::from_utf8(&text[..n]).unwrap_or("?");
    println!("granttest: rw page: \"{s}\"");
}

/// Obeys one command line; false when told to power off.
fn command(table: &GrantTable, line: &str) -> bool {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("show"), _) => show_rw(),
        (Some("end"), Some(r)) => match r.parse::<u32>() {
            Ok(gref) => {
                let result = match table.end_access(gref) {
                    Ok(()) => "ok",
                    Err(EndAccessError::Busy) => "busy",
                };
                println!("granttest: end_access({gref}): {result}");
            }
            Err(_) => println!("granttest: bad ref {r:?}"),
        },
        (Some("off"), _) => return false,
        _ => println!("granttest: unknown command {line:?}"),
    }
    true
}

fn main() {
    // SAFETY: page 0 of PAGES is used for nothing but the grant table.
    let table = match unsafe { GrantTable::setup(pfn(0)) } {
        Ok(t) => t,
        Err(e) => {
            println!("granttest: grant table setup failed: {e}");
            return;
        }
    };
    for i in 0..PAGE_SIZE as usize {
        // SAFETY: page 1 is this guest's page, not yet granted.
        unsafe { page_ptr(1).add(i).write_volatile(pattern(i)) };
    }
    table.grant_access(RO_REF, 0, pfn(1), true);
    table.grant_access(RW_REF, 0, pfn(2), false);
    println!(
        "granttest: ro ref={RO_REF} pfn={:#x} rw ref={RW_REF} pfn={:#x}",
        pfn(1),
        pfn(2)
    );
    if start::cmdline().split_whitespace().any(|w| w == "hostile") {
        hostile();
    }
    if rxen_guest::console::on_event(on_console).is_none() {
        println!("granttest: no console ring");
        return;
    }
    println!("granttest: ready");
    let mut line = [0u8; 256];
    loop {
        while let Some(n) = next_line(&mut line) {
            let text = core::str::from_utf8(&line[..n]).unwrap_or("?");
            if !command(&table, text.trim()) {
                println!("granttest: goodbye");
                return;
            }
        }
        events::wait_and_dispatch();
    }
}
