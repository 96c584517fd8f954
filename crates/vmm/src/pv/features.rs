//! The Xen feature flags a kernel declares: the `FEATURES` string note (and legacy
//! `FEATURES=` key) and the `SUPPORTED_FEATURES` bitmap note.
//!
//! Rules from Xen's `xen/common/libelf/libelf-dominfo.c`, `elf_xen_parse_features`:
//! the string is a `|`-separated list of names from `xen/include/public/features.h`
//! without the `XENFEAT_` prefix; a name preceded by `!` is *required* (and also
//! counts as supported); unknown supported names are ignored; an unknown required name
//! rejects the kernel. Only the names libelf knows are recognised.

use rxen_abi::features as xf;

/// The feature names libelf recognises, with their `XENFEAT_*` bit numbers.
pub const KNOWN_FEATURES: &[(&str, u32)] = &[
    ("writable_page_tables", xf::XENFEAT_WRITABLE_PAGE_TABLES),
    (
        "writable_descriptor_tables",
        xf::XENFEAT_WRITABLE_DESCRIPTOR_TABLES,
    ),
    (
        "auto_translated_physmap",
        xf::XENFEAT_AUTO_TRANSLATED_PHYSMAP,
    ),
    ("supervisor_mode_kernel", xf::XENFEAT_SUPERVISOR_MODE_KERNEL),
    ("pae_pgdir_above_4gb", xf::XENFEAT_PAE_PGDIR_ABOVE_4GB),
    ("hvm_callback_vector", xf::XENFEAT_HVM_CALLBACK_VECTOR),
    ("dom0", xf::XENFEAT_DOM0),
];

/// Why a feature declaration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    #[error("the kernel requires feature {0:?}, which Xen does not know")]
    UnknownRequired(String),
}

/// Feature bits of submap 0 (Xen defines `XENFEAT_NR_SUBMAPS` = 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// Features the kernel can use (required ones included).
    pub supported: u32,
    /// Features the kernel cannot run without.
    pub required: u32,
}

impl Features {
    /// Adds the features of a `FEATURES` string (`a|!b|c`).
    pub fn add_feature_string(&mut self, text: &str) -> Result<(), FeatureError> {
        for token in text.split('|') {
            let (name, required) = match token.strip_prefix('!') {
                Some(name) => (name, true),
                None => (token, false),
            };
            match KNOWN_FEATURES.iter().find(|(known, _)| *known == name) {
                Some(&(_, bit)) => {
                    self.supported |= 1 << bit;
                    if required {
                        self.required |= 1 << bit;
                    }
                }
                None if required => return Err(FeatureError::UnknownRequired(name.into())),
                None => {}
            }
        }
        Ok(())
    }

    /// Adds submap 0 of a `SUPPORTED_FEATURES` bitmap.
    pub fn add_supported_bitmap(&mut self, bits: u32) {
        self.supported |= bits;
    }

    /// Whether feature `bit` is supported.
    pub fn supports(&self, bit: u32) -> bool {
        bit < 32 && self.supported & (1 << bit) != 0
    }

    /// Whether feature `bit` is required.
    pub fn requires(&self, bit: u32) -> bool {
        bit < 32 && self.required & (1 << bit) != 0
    }

    /// Required features missing from `offered` (the hypervisor's feature bits).
    pub fn missing_from(&self, offered: u32) -> u32 {
        self.required & !offered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_and_supported_names_set_their_bits() {
        let mut f = Features::default();
        f.add_feature_string("writable_page_tables|!auto_translated_physmap|dom0")
            .unwrap();
        assert!(f.supports(xf::XENFEAT_WRITABLE_PAGE_TABLES));
        assert!(f.supports(xf::XENFEAT_AUTO_TRANSLATED_PHYSMAP));
        assert!(f.requires(xf::XENFEAT_AUTO_TRANSLATED_PHYSMAP));
        assert!(!f.requires(xf::XENFEAT_WRITABLE_PAGE_TABLES));
        assert!(f.supports(xf::XENFEAT_DOM0));
        assert_eq!(f.missing_from(0), 1 << xf::XENFEAT_AUTO_TRANSLATED_PHYSMAP);
    }

    #[test]
    fn unknown_names_are_ignored_unless_required() {
        let mut f = Features::default();
        f.add_feature_string("no_such_thing||").unwrap();
        assert_eq!(f, Features::default());
        assert_eq!(
            f.add_feature_string("dom0|!no_such_thing"),
            Err(FeatureError::UnknownRequired("no_such_thing".into()))
        );
        assert_eq!(
            Features::default().add_feature_string("!"),
            Err(FeatureError::UnknownRequired(String::new()))
        );
    }

    #[test]
    fn bitmap_adds_to_supported_only() {
        let mut f = Features::default();
        f.add_supported_bitmap(0b101);
        assert!(f.supports(0) && f.supports(2) && !f.requires(0));
        assert!(!f.supports(40));
    }
}
