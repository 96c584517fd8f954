//! The xenbus device states of xen/include/public/io/xenbus.h, written as decimal
//! strings in each end's `state` node.

/// `enum xenbus_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    Unknown = 0,
    Initialising = 1,
    /// The backend waits for the frontend's details (ring, event channel).
    InitWait = 2,
    /// The frontend published its details.
    Initialised = 3,
    Connected = 4,
    /// The device is being closed.
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl XenbusState {
    /// The state of a `state` node's value (`None` for anything else).
    pub fn from_value(v: u32) -> Option<Self> {
        use XenbusState::*;
        Some(match v {
            0 => Unknown,
            1 => Initialising,
            2 => InitWait,
            3 => Initialised,
            4 => Connected,
            5 => Closing,
            6 => Closed,
            7 => Reconfiguring,
            8 => Reconfigured,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in 0..=8u32 {
            assert_eq!(XenbusState::from_value(v).map(|s| s as u32), Some(v));
        }
        assert_eq!(XenbusState::from_value(9), None);
        assert_eq!(XenbusState::Connected as u8, 4);
    }
}
