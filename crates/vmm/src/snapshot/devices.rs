//! The device part of the state document (version 2): what each backend needs to
//! serve a saved domain's rings again without the frontend noticing. The backends
//! are quiesced before the domain's memory is read (every request they took is
//! answered and published, their grant mappings and domain 0's channel ends are
//! gone), so memory, grant entries and event channels are saved in a state where no
//! backend holds anything of the guest's; the backends started for the restored
//! domain map and bind again from this record (`docs/migration.md`, "Devices").

use serde::{Deserialize, Serialize};

use crate::blkback::saved::SavedVbd;
use crate::netback::saved::SavedVif;

/// The device backends of a domain being saved or migrated, as the snapshot code
/// sees them: quiesced once the domain is paused (a save, a migration's
/// stop-and-copy), resumed when the domain runs on here after all (`xm save -c`,
/// a failure).
pub trait QuiesceBackends {
    /// Quiesces every connected device of the paused domain; returns their state.
    /// On an error nothing stays quiesced.
    fn quiesce(&self) -> Result<DeviceStates, String>;
    /// Lets the devices of `saved` serve their rings again.
    fn resume(&self, saved: DeviceStates);
}

/// A domain without device backends (a VMM started without them, or tests).
pub struct NoBackends;

impl QuiesceBackends for NoBackends {
    fn quiesce(&self) -> Result<DeviceStates, String> {
        Ok(DeviceStates::default())
    }

    fn resume(&self, _saved: DeviceStates) {}
}

/// Every connected device's backend state at the save, by device number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStates {
    #[serde(default)]
    pub vbds: Vec<(u32, SavedVbd)>,
    #[serde(default)]
    pub vifs: Vec<(u32, SavedVif)>,
}

impl DeviceStates {
    /// Whether no device was connected.
    pub fn is_empty(&self) -> bool {
        self.vbds.is_empty() && self.vifs.is_empty()
    }

    /// The guest ports the saved rings use.
    pub fn guest_ports(&self) -> Vec<u32> {
        let vbd = self
            .vbds
            .iter()
            .flat_map(|(_, v)| v.rings.iter().map(|r| r.evtchn));
        let vif = self.vifs.iter().flat_map(|(_, v)| v.guest_ports());
        vbd.chain(vif).collect()
    }

    /// Refuses device numbers that appear twice or are not among `vbds` / `vifs`
    /// (the devices the restorer was given).
    pub fn check_devids(&self, vbds: &[u32], vifs: &[u32]) -> Result<(), String> {
        let check = |class: &str, saved: Vec<u32>, given: &[u32]| {
            let mut seen = std::collections::BTreeSet::new();
            for d in saved {
                if !seen.insert(d) {
                    return Err(format!("{class} {d} is saved twice"));
                }
                if !given.contains(&d) {
                    return Err(format!(
                        "{class} {d} is in the image but not in the domain's configuration"
                    ));
                }
            }
            Ok(())
        };
        check("vbd", self.vbds.iter().map(|v| v.0).collect(), vbds)?;
        check("vif", self.vifs.iter().map(|v| v.0).collect(), vifs)
    }
}
