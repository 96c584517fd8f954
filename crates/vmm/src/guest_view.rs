//! The guest's view of memory for pointers it passes in hypercalls and on its stack.
//!
//! A pointer from the guest is a guest-*virtual* address ([`Gva`]). In rxen's own
//! layout the guest's page tables are an identity map the guest cannot change, so the
//! view is [`GuestRam::check_guest_range`] over guest-physical addresses. In a Xen PV
//! domain the guest's page tables are its own (changed only through the MMU
//! hypercalls): the view walks them from the vCPU's current L4, as the CPU would for
//! a guest-kernel access, and every page of an access is translated and checked on
//! its own (present at every level, writable at every level for writes). What a
//! walk can reach is bounded by the MMU's validation: only the domain's own frames,
//! its `shared_info` and grant frames, and rxen's read-only area.
//!
//! This module reads page-table entries once each (atomically) and never caches a
//! translation: a concurrent `mmu_update` on another vCPU can at worst make one
//! access see the old or the new mapping, both of which the guest was allowed.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::memory::{Access, GuestRam, MemoryError};
use rxen_abi::PAGE_SIZE;

/// A guest-virtual address (what the guest passes in hypercalls).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gva(pub u64);

/// A guest-physical address (an offset into the domain's RAM; rxen builds PV domains
/// with `mfn == pfn`, so it is also the machine address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gpa(pub u64);

const PTE_PRESENT: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PSE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// How guest pointers are translated.
#[derive(Clone, Copy, Debug)]
enum Paging {
    /// rxen's identity-mapped layout (checked by the layout's rules).
    Identity,
    /// Xen PV: the page tables rooted at this L4 frame.
    Tables { l4: u64 },
    /// Xen PV before the vCPU has page tables: nothing is reachable.
    NoTables,
}

/// The memory a guest pointer may reach, for one vCPU at one moment.
#[derive(Clone, Copy, Debug)]
pub struct GuestView<'a> {
    ram: &'a GuestRam,
    paging: Paging,
}

impl<'a> GuestView<'a> {
    /// rxen's own layout: pointers are guest-physical, checked against the layout.
    pub fn identity(ram: &'a GuestRam) -> Self {
        GuestView {
            ram,
            paging: Paging::Identity,
        }
    }

    /// A Xen PV vCPU whose kernel base pointer is the L4 table in frame `l4` (`None`
    /// when it has none: every access fails).
    pub fn paged(ram: &'a GuestRam, l4: Option<u64>) -> Self {
        GuestView {
            ram,
            paging: l4.map_or(Paging::NoTables, |l4| Paging::Tables { l4 }),
        }
    }

    /// The RAM behind the view.
    pub fn ram(&self) -> &'a GuestRam {
        self.ram
    }

    /// The guest-physical address `va` reaches for `access`, if the guest may use it
    /// that way. Only the page of `va` is checked.
    pub fn translate(&self, va: Gva, access: Access) -> Result<Gpa, MemoryError> {
        let denied = |what: &'static str| MemoryError::Forbidden {
            addr: va.0,
            len: 1,
            access: what,
        };
        let l4 = match self.paging {
            Paging::Identity => {
                self.ram.check_guest_range(va.0, 1, access)?;
                return Ok(Gpa(va.0));
            }
            Paging::NoTables => return Err(denied("mapped")),
            Paging::Tables { l4 } => l4,
        };
        if !is_canonical(va.0) {
            return Err(denied("mapped"));
        }
        let mut table = l4;
        for shift in [39u32, 30, 21, 12] {
            let index = (va.0 >> shift) & 0x1ff;
            let at = table
                .checked_mul(PAGE_SIZE)
                .and_then(|t| t.checked_add(index * 8))
                .ok_or(denied("mapped"))?;
            let entry = self
                .ram
                .atomic_u64(at)
                .map_err(|_| denied("mapped"))?
                .load(std::sync::atomic::Ordering::Acquire);
            if entry & PTE_PRESENT == 0 {
                return Err(denied("mapped"));
            }
            if access == Access::Write && entry & PTE_RW == 0 {
                return Err(denied("writable"));
            }
            let frame_base = entry & PTE_ADDR;
            if shift == 12 {
                return Ok(Gpa(frame_base | (va.0 & (PAGE_SIZE - 1))));
            }
            if shift != 39 && entry & PTE_PSE != 0 {
                let span = 1u64 << shift;
                return Ok(Gpa((frame_base & !(span - 1)) | (va.0 & (span - 1))));
            }
            table = frame_base / PAGE_SIZE;
        }
        Err(denied("mapped"))
    }

    /// Checks that `[ptr, ptr+len)` may be used for `access`.
    pub fn check(&self, ptr: u64, len: u64, access: Access) -> Result<(), MemoryError> {
        self.each_piece(ptr, len, access, |_, _| Ok(()))
    }

    /// Calls `f(gpa, offset_in_access, piece_len)` for each page-bounded piece of the
    /// access, after checking every piece first (so a failing access changes nothing).
    fn each_piece(
        &self,
        ptr: u64,
        len: u64,
        access: Access,
        mut f: impl FnMut(Gpa, std::ops::Range<usize>) -> Result<(), MemoryError>,
    ) -> Result<(), MemoryError> {
        let out_of_range = MemoryError::OutOfRange {
            addr: ptr,
            len,
            size: self.ram.size(),
        };
        let end = ptr.checked_add(len).ok_or(out_of_range)?;
        if let Paging::Identity = self.paging {
            self.ram.check_guest_range(ptr, len, access)?;
            let n = usize::try_from(len).map_err(|_| MemoryError::Misaligned(ptr))?;
            return f(Gpa(ptr), 0..n);
        }
        let mut pieces = Vec::new();
        let mut at = ptr;
        while at < end {
            let page_end = (at | (PAGE_SIZE - 1)).saturating_add(1).min(end);
            let gpa = self.translate(Gva(at), access)?;
            let from = (at - ptr) as usize;
            let to = (page_end - ptr) as usize;
            pieces.push((gpa, from..to));
            at = page_end;
        }
        for (gpa, range) in pieces {
            f(gpa, range)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at guest pointer `ptr`.
    pub fn read_bytes(&self, ptr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        self.each_piece(ptr, len, Access::Read, |gpa, range| {
            self.ram.read(gpa.0, &mut buf[range])
        })
    }

    /// Writes `buf` at guest pointer `ptr` (nothing is written unless every page of
    /// the range is writable).
    pub fn write_bytes(&self, ptr: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.each_piece(ptr, buf.len() as u64, Access::Write, |gpa, range| {
            self.ram.write(gpa.0, &buf[range])
        })
    }

    /// Reads a value at guest pointer `ptr`.
    pub fn read<T: FromBytes + IntoBytes>(&self, ptr: u64) -> Result<T, MemoryError> {
        let mut v = T::new_zeroed();
        self.read_bytes(ptr, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Writes a value at guest pointer `ptr`.
    pub fn write<T: IntoBytes + Immutable>(&self, ptr: u64, v: &T) -> Result<(), MemoryError> {
        self.write_bytes(ptr, v.as_bytes())
    }
}

/// Whether `va` is a canonical 48-bit address.
pub fn is_canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// RAM with a 4-level table at frames 1..=4 mapping va 0x4000_0000_0000 + n pages
    /// to frames 16 + n (n < 4), frame 17 read-only; 2 MiB page at va 0x20_0000 -> 4 MiB.
    fn tables() -> (GuestRam, u64) {
        let ram = GuestRam::new("view", 16 * MIB).unwrap();
        let (l4, l3, l2, l1) = (1u64, 2u64, 3u64, 4u64);
        let va = 0x4000_0000_0000u64;
        let put = |table: u64, idx: u64, val: u64| {
            ram.write_obj(table * PAGE_SIZE + idx * 8, &val).unwrap()
        };
        put(l4, (va >> 39) & 0x1ff, (l3 * PAGE_SIZE) | 7);
        put(l3, (va >> 30) & 0x1ff, (l2 * PAGE_SIZE) | 7);
        put(l2, (va >> 21) & 0x1ff, (l1 * PAGE_SIZE) | 7);
        for n in 0..4u64 {
            let rw = if n == 1 { 0 } else { PTE_RW };
            put(l1, n, ((16 + n) * PAGE_SIZE) | PTE_PRESENT | rw | 4);
        }
        // Low half: L3 entry 0 -> L2 at frame 5 with a 2 MiB page.
        put(l4, 0, (6 * PAGE_SIZE) | 7);
        put(6, 0, (5 * PAGE_SIZE) | 7);
        put(5, 1, (4 * MIB) | PTE_PSE | 7);
        (ram, l4)
    }

    #[test]
    fn translates_through_four_levels_and_superpages() {
        let (ram, l4) = tables();
        let view = GuestView::paged(&ram, Some(l4));
        let va = 0x4000_0000_0000u64;
        assert_eq!(
            view.translate(Gva(va + 5), Access::Read).unwrap(),
            Gpa(16 * PAGE_SIZE + 5)
        );
        assert_eq!(
            view.translate(Gva(va + 3 * PAGE_SIZE), Access::Write)
                .unwrap(),
            Gpa(19 * PAGE_SIZE)
        );
        assert_eq!(
            view.translate(Gva(0x20_0000 + 0x1234), Access::Read)
                .unwrap(),
            Gpa(4 * MIB + 0x1234)
        );
        assert!(
            view.translate(Gva(va + PAGE_SIZE), Access::Write).is_err(),
            "read-only page"
        );
        assert!(view.translate(Gva(va + PAGE_SIZE), Access::Read).is_ok());
        assert!(
            view.translate(Gva(va + 4 * PAGE_SIZE), Access::Read)
                .is_err(),
            "not present"
        );
        assert!(
            view.translate(Gva(0x8000_0000_0000), Access::Read).is_err(),
            "non-canonical"
        );
        assert!(GuestView::paged(&ram, None)
            .translate(Gva(va), Access::Read)
            .is_err());
    }

    #[test]
    fn accesses_split_at_pages_and_fail_whole() {
        let (ram, l4) = tables();
        let view = GuestView::paged(&ram, Some(l4));
        let va = 0x4000_0000_0000u64;
        // Across frames 18 and 19 (virtually contiguous, physically too here) and
        // then across 16 -> 17 where 17 is read-only: nothing may be written.
        view.write_bytes(va + 3 * PAGE_SIZE - 2, &[1, 2, 3, 4])
            .unwrap();
        let mut back = [0u8; 4];
        view.read_bytes(va + 3 * PAGE_SIZE - 2, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3, 4]);
        assert!(view.write_bytes(va + PAGE_SIZE - 2, &[9, 9, 9, 9]).is_err());
        assert_eq!(
            ram.read_obj::<u16>(16 * PAGE_SIZE + PAGE_SIZE - 2).unwrap(),
            0,
            "no partial write"
        );
        assert!(view.read::<u64>(u64::MAX - 3).is_err(), "overflow");
    }

    #[test]
    fn identity_view_keeps_the_layout_rules() {
        let ram = GuestRam::new("view-id", 16 * MIB).unwrap();
        let view = GuestView::identity(&ram);
        assert!(view.read::<u64>(0).is_err(), "page 0 is unmapped");
        let at = rxen_abi::layout::BOOT_STACK_BOTTOM;
        view.write(at, &7u64).unwrap();
        assert_eq!(view.read::<u64>(at).unwrap(), 7);
    }
}
