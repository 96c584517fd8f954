//! A from-scratch recount of every reference, for tests and fuzzing.

use super::entry::{self, Level, ENTRIES, PAGE_RW};
use super::{FrameType, GuestFrames, Mmu};
use rxen_abi::mmu::is_guest_l4_slot;

impl Mmu {
    /// Recomputes every frame's references and type references from the validated
    /// tables, the pins and the vCPUs' bases, and checks them against the table, along
    /// with the isolation rules: no frame is a page table and writably mapped, page
    /// tables and mapped frames belong to the domain. Returns the first violation.
    pub fn audit<G: GuestFrames + ?Sized>(&self, mem: &G) -> Result<(), String> {
        let n = self.frames.len();
        let mut refs = vec![0u64; n];
        let mut types = vec![0u64; n];
        let bump = |v: &mut Vec<u64>, f: u64| -> Result<(), String> {
            let slot = usize::try_from(f)
                .ok()
                .and_then(|i| v.get_mut(i))
                .ok_or_else(|| format!("reference to frame {f:#x} out of range"))?;
            *slot += 1;
            Ok(())
        };
        for (f, info) in self.frames.iter().enumerate() {
            if info.owner.permanently_writable() {
                types[f] += 1;
            }
            if info.pinned {
                refs[f] += 1;
                types[f] += 1;
            }
            if matches!(info.ty, FrameType::Table(_)) && info.type_count > 0 && !info.validated {
                return Err(format!("frame {f:#x}: table type held but not validated"));
            }
            let Some(level) = info.table_level() else {
                continue;
            };
            if !info.owner.is_domains() || info.owner.permanently_writable() {
                return Err(format!(
                    "frame {f:#x}: page table owned by {:?}",
                    info.owner
                ));
            }
            for i in 0..ENTRIES {
                if level == Level::L4 && !is_guest_l4_slot(i) {
                    continue;
                }
                let e = mem.read_entry(f as u64, i);
                if !entry::present(e) {
                    continue;
                }
                if e & level.disallowed() != 0 {
                    return Err(format!("frame {f:#x}[{i}]: disallowed flags in {e:#x}"));
                }
                let t = entry::mfn(e);
                let target = self
                    .info(t)
                    .ok_or_else(|| format!("frame {f:#x}[{i}] points out of range"))?;
                if !target.owner.is_domains() {
                    return Err(format!(
                        "frame {f:#x}[{i}] maps {t:#x} owned by {:?}",
                        target.owner
                    ));
                }
                bump(&mut refs, t)?;
                match level.child() {
                    None if e & PAGE_RW != 0 => {
                        if target.ty != FrameType::Writable {
                            return Err(format!(
                                "frame {t:#x} is {:?} and mapped writable",
                                target.ty
                            ));
                        }
                        bump(&mut types, t)?;
                    }
                    None => {}
                    Some(child) => {
                        if target.table_level() != Some(child) {
                            return Err(format!(
                                "frame {f:#x}[{i}] links {t:#x} which is not a {child:?}"
                            ));
                        }
                        bump(&mut types, t)?;
                    }
                }
            }
        }
        for v in &self.vcpus {
            for base in [v.kernel, v.user].into_iter().flatten() {
                if self.info(base).and_then(|i| i.table_level()) != Some(Level::L4) {
                    return Err(format!("base {base:#x} is not a validated L4"));
                }
                bump(&mut refs, base)?;
                bump(&mut types, base)?;
            }
            if let Some(f) = v.vcpu_info {
                if self.info(f).map(|i| i.ty) != Some(FrameType::Writable) {
                    return Err(format!("vcpu_info frame {f:#x} is not writable"));
                }
                bump(&mut refs, f)?;
                bump(&mut types, f)?;
            }
            for &f in v.gdt.frames() {
                if self.info(f).map(|i| i.ty) != Some(FrameType::SegDesc) {
                    return Err(format!("GDT frame {f:#x} is not a descriptor frame"));
                }
                bump(&mut refs, f)?;
                bump(&mut types, f)?;
            }
        }
        for (f, info) in self.frames.iter().enumerate() {
            if u64::from(info.refs) != refs[f] || u64::from(info.type_count) != types[f] {
                return Err(format!(
                    "frame {f:#x}: counted refs {} type {}, recorded refs {} type {} ({:?})",
                    refs[f], types[f], info.refs, info.type_count, info.ty
                ));
            }
        }
        Ok(())
    }
}
