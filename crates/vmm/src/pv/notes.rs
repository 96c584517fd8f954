//! What a kernel's Xen notes declare ([`XenNotes`]) and where they came from
//! ([`NoteSource`]): the data both readers fill, the ELF notes
//! ([`super::elfnotes`]) and the legacy `__xen_guest` string ([`super::xen_guest`]).

use super::features::Features;

/// Where the Xen notes of an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteSource {
    /// `PT_NOTE` program headers.
    ProgramHeaders,
    /// `SHT_NOTE` sections (no `PT_NOTE` held a Xen note).
    Sections,
    /// The legacy `__xen_guest` string section.
    LegacyXenGuest,
}

/// The Xen notes of a kernel, as declared (no defaults applied; see
/// [`crate::pv::image`] for those).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XenNotes {
    /// Where the notes were found; `None` if the image has none.
    pub source: Option<NoteSource>,
    /// Xen notes (or legacy keys) read.
    pub count: usize,
    pub entry: Option<u64>,
    /// Virtual address of the hypercall page (the legacy key's pfn already converted).
    pub hypercall_page: Option<u64>,
    pub virt_base: Option<u64>,
    pub paddr_offset: Option<u64>,
    pub xen_version: Option<String>,
    pub guest_os: Option<String>,
    pub guest_version: Option<String>,
    pub loader: Option<String>,
    pub pae_mode: Option<String>,
    pub features: Features,
    /// `BSD_SYMTAB` = "yes" (or the legacy key present).
    pub bsd_symtab: bool,
    pub hv_start_low: Option<u64>,
    /// First word of `L1_MFN_VALID` (a numeric note like libelf reads it).
    pub l1_mfn_valid: Option<u64>,
    pub suspend_cancel: Option<u64>,
    pub init_p2m: Option<u64>,
    pub mod_start_pfn: Option<u64>,
    pub phys32_entry: Option<u64>,
}

impl XenNotes {
    /// Whether the kernel accepts its initrd unmapped, passed by pfn (`MOD_START_PFN`).
    pub fn unmapped_initrd(&self) -> bool {
        self.mod_start_pfn.is_some_and(|v| v != 0)
    }
}
