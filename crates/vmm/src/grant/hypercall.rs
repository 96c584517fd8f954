//! The guest's `grant_table_op` (and `XENMEM_add_to_physmap` for grant frames):
//! [`decode`] reads and checks the arguments without side effects (so it can be
//! fuzzed alone); [`execute`] runs them on the domain's [`GrantTable`].
//!
//! The guest itself may set up and query its table and copy between its own frames
//! and its own grants; it cannot map grants (it has no other domain to map from, and
//! its physmap is fixed), so map requests get a per-operation `GNTST_*` status.

use rxen_abi::errno::*;
use rxen_abi::grant_table::*;
use rxen_abi::{DomId, DOMID_SELF};
use zerocopy::{FromBytes, IntoBytes};

use super::table::check_segment;
use super::{GrantError, GrantTable, MAX_GRANT_FRAMES};
use crate::guest_view::GuestView;
use crate::memory::Access;

/// Most operations of one batched `grant_table_op` (map, unmap, copy). Xen splits
/// longer batches with continuations; rxen refuses them with `-EINVAL`.
pub const MAX_BATCH: u64 = 512;

/// `xen_pfn_t` written to `setup_table`'s frame list for a frame not placed yet.
pub const INVALID_GFN: u64 = u64::MAX;

/// A decoded `grant_table_op`; `ptr` is the guest's argument, for write-back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantOp {
    SetupTable {
        ptr: u64,
        dom: DomId,
        nr_frames: u32,
        frame_list: u64,
    },
    QuerySize {
        ptr: u64,
        dom: DomId,
    },
    SetVersion {
        ptr: u64,
        version: u32,
    },
    GetVersion {
        ptr: u64,
        dom: DomId,
    },
    /// Map requests: `(dom, flags)` of each.
    Map {
        ptr: u64,
        ops: Vec<(DomId, u32)>,
    },
    Unmap {
        ptr: u64,
        count: u64,
    },
    Copy {
        ptr: u64,
        ops: Vec<GnttabCopy>,
    },
}

fn read<T: FromBytes + IntoBytes>(mem: &GuestView<'_>, ptr: u64) -> Result<T, i32> {
    mem.read(ptr).map_err(|_| -EFAULT)
}

fn check_rw(mem: &GuestView<'_>, ptr: u64, len: u64) -> Result<(), i32> {
    mem.check(ptr, len, Access::Write).map_err(|_| -EFAULT)
}

fn single<T>(mem: &GuestView<'_>, ptr: u64, count: u64) -> Result<(), i32> {
    if count != 1 {
        return Err(-EINVAL);
    }
    check_rw(mem, ptr, size_of::<T>() as u64)
}

fn batch<T: FromBytes + IntoBytes>(
    mem: &GuestView<'_>,
    ptr: u64,
    count: u64,
) -> Result<Vec<T>, i32> {
    if count > MAX_BATCH {
        return Err(-EINVAL);
    }
    let size = size_of::<T>() as u64;
    check_rw(mem, ptr, count * size)?;
    (0..count).map(|i| read(mem, ptr + i * size)).collect()
}

/// Decodes `grant_table_op(cmd, ptr, count)`. `Err` is the (negative) return value.
pub fn decode(cmd: u64, ptr: u64, count: u64, mem: &GuestView<'_>) -> Result<GrantOp, i32> {
    if count > u64::from(i32::MAX as u32) {
        return Err(-EINVAL);
    }
    match cmd {
        GNTTABOP_SETUP_TABLE => {
            single::<GnttabSetupTable>(mem, ptr, count)?;
            let a: GnttabSetupTable = read(mem, ptr)?;
            // Xen checks the list only for a count it could serve: more frames than
            // the limit is `GNTST_general_error` in `execute`, not `-EFAULT`.
            let listed = a.nr_frames.min(MAX_GRANT_FRAMES);
            check_rw(mem, a.frame_list, u64::from(listed) * 8)?;
            Ok(GrantOp::SetupTable {
                ptr,
                dom: a.dom,
                nr_frames: a.nr_frames,
                frame_list: a.frame_list,
            })
        }
        GNTTABOP_QUERY_SIZE => {
            single::<GnttabQuerySize>(mem, ptr, count)?;
            let a: GnttabQuerySize = read(mem, ptr)?;
            Ok(GrantOp::QuerySize { ptr, dom: a.dom })
        }
        GNTTABOP_SET_VERSION => {
            single::<GnttabSetVersion>(mem, ptr, count)?;
            let a: GnttabSetVersion = read(mem, ptr)?;
            Ok(GrantOp::SetVersion {
                ptr,
                version: a.version,
            })
        }
        GNTTABOP_GET_VERSION => {
            single::<GnttabGetVersion>(mem, ptr, count)?;
            let a: GnttabGetVersion = read(mem, ptr)?;
            Ok(GrantOp::GetVersion { ptr, dom: a.dom })
        }
        GNTTABOP_MAP_GRANT_REF => {
            let ops: Vec<GnttabMapGrantRef> = batch(mem, ptr, count)?;
            Ok(GrantOp::Map {
                ptr,
                ops: ops.iter().map(|o| (o.dom, o.flags)).collect(),
            })
        }
        GNTTABOP_UNMAP_GRANT_REF => {
            batch::<GnttabUnmapGrantRef>(mem, ptr, count)?;
            Ok(GrantOp::Unmap { ptr, count })
        }
        GNTTABOP_COPY => Ok(GrantOp::Copy {
            ptr,
            ops: batch(mem, ptr, count)?,
        }),
        _ => Err(-ENOSYS),
    }
}

fn is_self(table: &GrantTable, dom: DomId) -> bool {
    dom == DOMID_SELF || dom == table.domid()
}

fn put<T: IntoBytes + zerocopy::Immutable>(
    mem: &GuestView<'_>,
    ptr: u64,
    v: &T,
) -> Result<(), i32> {
    mem.write(ptr, v).map_err(|_| -EFAULT)
}

fn rc(r: Result<(), i32>) -> i64 {
    r.map_or_else(i64::from, |()| 0)
}

/// Executes a decoded `grant_table_op` for the guest; returns its `rax`.
pub fn execute(table: &GrantTable, mem: &GuestView<'_>, op: GrantOp) -> i64 {
    match op {
        GrantOp::SetupTable {
            ptr,
            dom,
            nr_frames,
            frame_list,
        } => {
            let status = if !is_self(table, dom) {
                GNTST_BAD_DOMAIN
            } else if nr_frames > MAX_GRANT_FRAMES || !table.grow(nr_frames) {
                GNTST_GENERAL_ERROR
            } else {
                let pfns = table.frame_pfns(nr_frames);
                let list: Vec<u64> = pfns.iter().map(|p| p.unwrap_or(INVALID_GFN)).collect();
                match mem.write_bytes(frame_list, list.as_bytes()) {
                    Ok(()) => GNTST_OKAY,
                    Err(_) => GNTST_BAD_VIRT_ADDR,
                }
            };
            rc(put(mem, ptr + 8, &status))
        }
        GrantOp::QuerySize { ptr, dom } => {
            let mut out = GnttabQuerySize {
                dom,
                status: GNTST_BAD_DOMAIN,
                ..Default::default()
            };
            if is_self(table, dom) {
                out.nr_frames = table.nr_frames();
                out.max_nr_frames = MAX_GRANT_FRAMES;
                out.status = GNTST_OKAY;
            }
            rc(put(mem, ptr, &out))
        }
        GrantOp::SetVersion { ptr, version } => {
            let r = match version {
                1 => 0,
                // Version 2 is not offered (Xen with `gnttab_max_version=1`).
                2 => -ENOSYS,
                _ => -EINVAL,
            };
            let back = GnttabSetVersion {
                version: table.version(),
            };
            match put(mem, ptr, &back) {
                Ok(()) => i64::from(r),
                Err(e) => i64::from(e),
            }
        }
        GrantOp::GetVersion { ptr, dom } => {
            if !is_self(table, dom) {
                return i64::from(-ESRCH);
            }
            rc(put(
                mem,
                ptr,
                &GnttabGetVersion {
                    dom,
                    pad: 0,
                    version: table.version(),
                },
            ))
        }
        GrantOp::Map { ptr, ops } => {
            for (i, &(dom, flags)) in ops.iter().enumerate() {
                let status = if flags & (GNTMAP_HOST_MAP | GNTMAP_DEVICE_MAP) == 0 {
                    GNTST_BAD_GNTREF
                } else if !is_self(table, dom) {
                    GNTST_BAD_DOMAIN
                } else {
                    GrantError::Unsupported.status()
                };
                let at = ptr + i as u64 * size_of::<GnttabMapGrantRef>() as u64;
                if let Err(e) = put(mem, at + 18, &status) {
                    return i64::from(e);
                }
            }
            0
        }
        GrantOp::Unmap { ptr, count } => {
            // The guest holds no mappings, so every handle is bad.
            for i in 0..count {
                let at = ptr + i * size_of::<GnttabUnmapGrantRef>() as u64;
                if let Err(e) = put(mem, at + 20, &GNTST_BAD_HANDLE) {
                    return i64::from(e);
                }
            }
            0
        }
        GrantOp::Copy { ptr, ops } => {
            for (i, c) in ops.iter().enumerate() {
                let status = match copy_one(table, c) {
                    Ok(()) => GNTST_OKAY,
                    Err(e) => e.status(),
                };
                let at = ptr + i as u64 * size_of::<GnttabCopy>() as u64;
                if let Err(e) = put(mem, at + 36, &status) {
                    return i64::from(e);
                }
            }
            0
        }
    }
}

/// One `gnttab_copy` issued by the guest: each side is one of its own grants (the
/// entry must name the guest's own domid) or one of its own frames (`DOMID_SELF`).
fn copy_one(table: &GrantTable, c: &GnttabCopy) -> Result<(), GrantError> {
    let sides = [
        (c.source, c.flags & GNTCOPY_SOURCE_GREF != 0),
        (c.dest, c.flags & GNTCOPY_DEST_GREF != 0),
    ];
    for (side, by_gref) in sides {
        if by_gref && !is_self(table, side.domid) {
            return Err(GrantError::BadDomain(side.domid));
        }
        if !by_gref && side.domid != DOMID_SELF {
            return Err(GrantError::PermissionDenied);
        }
    }
    let len = u64::from(c.len);
    check_segment(u64::from(c.source.offset), len)?;
    check_segment(u64::from(c.dest.offset), len)?;
    let mut buf = vec![0u8; c.len as usize];
    let me = table.domid();
    let (src, src_gref) = sides[0];
    let src_off = u64::from(src.offset);
    if src_gref {
        table.copy_from_grant(me, src.u as u32, src_off, &mut buf)?;
    } else {
        let gpa = local_frame(table, src.u, Access::Read)?;
        table
            .ram()
            .read(gpa + src_off, &mut buf)
            .map_err(|_| GrantError::BadPage(src.u))?;
    }
    let (dst, dst_gref) = sides[1];
    let dst_off = u64::from(dst.offset);
    if dst_gref {
        table.copy_to_grant(me, dst.u as u32, dst_off, &buf)
    } else {
        let gpa = local_frame(table, dst.u, Access::Write)?;
        table
            .ram()
            .write(gpa + dst_off, &buf)
            .map_err(|_| GrantError::BadPage(dst.u))
    }
}

/// The address of the caller's frame `gmfn` if it may be used for `access`.
fn local_frame(table: &GrantTable, gmfn: u64, access: Access) -> Result<u64, GrantError> {
    table
        .local_frame(gmfn, access)
        .ok_or(GrantError::BadPage(gmfn))
}

/// `XENMEM_add_to_physmap`: only `XENMAPSPACE_grant_table` for the guest itself.
pub fn add_to_physmap(table: &GrantTable, arg: &XenAddToPhysmap) -> i64 {
    if !is_self(table, arg.domid) {
        return i64::from(-ESRCH);
    }
    if arg.space != XENMAPSPACE_GRANT_TABLE {
        return i64::from(-ENOSYS);
    }
    if table.is_pv() {
        // Only auto-translated guests place frames; a PV guest maps the machine
        // frames `setup_table` lists.
        return i64::from(-EACCES);
    }
    match table.place_frame(arg.idx, arg.gpfn) {
        Ok(()) => 0,
        Err(e) => i64::from(e.errno()),
    }
}
