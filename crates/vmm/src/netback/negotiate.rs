//! What the backend offers in its xenbus directory and what it accepts from the
//! frontend's (io/netif.h, "Feature and Parameter Negotiation"), pure and tested alone.
//!
//! Offered: `feature-rx-copy` = 1, `feature-rx-flip` = 0, `feature-sg` = 1 (TX chains),
//! `feature-split-event-channels` = 1, checksum offload for IPv4
//! (`feature-no-csum-offload` = 0) and IPv6 (`feature-ipv6-csum-offload` = 1), TCP
//! segmentation offload for both (`feature-gso-tcpv4`/`-tcpv6` = 1); no multi-queue
//! (`multi-queue-max-queues` absent).
//!
//! Read from the frontend (hostile: each value parsed strictly): `tx-ring-ref`,
//! `rx-ring-ref`, `event-channel` or both `event-channel-tx` and `event-channel-rx`,
//! `request-rx-copy` (must be 1: page flipping is not supported),
//! `multi-queue-num-queues` (absent or 1), and what it takes on RX: `feature-sg` (frames
//! over several buffers), `feature-no-csum-offload` (absent or 0: partial IPv4
//! checksums), `feature-ipv6-csum-offload`, `feature-gso-tcpv4`, `feature-gso-tcpv6`.

/// Why a frontend's details were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{key} {value:?} is not a number")]
    NotANumber { key: &'static str, value: String },
    #[error("request-rx-copy is not 1: receive by page flipping is not supported")]
    NoRxCopy,
    #[error("multi-queue-num-queues {0} was not offered (one queue only)")]
    Queues(u32),
}

/// Domain 0's end(s) of the frontend's event channel(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventChannels {
    /// `event-channel`: one for both rings.
    Shared(u32),
    /// `event-channel-tx`, `event-channel-rx`.
    Split { tx: u32, rx: u32 },
}

use super::rx::RxOffload;

impl From<EventChannels> for rxen_vmm_api::VifEventChannels {
    fn from(e: EventChannels) -> Self {
        match e {
            EventChannels::Shared(p) => Self::Shared(p),
            EventChannels::Split { tx, rx } => Self::Split { tx, rx },
        }
    }
}

impl From<RxOffload> for rxen_vmm_api::VifRxOffload {
    fn from(o: RxOffload) -> Self {
        Self {
            sg: o.sg,
            csum_v4: o.csum_v4,
            csum_v6: o.csum_v6,
            gso_v4: o.gso_v4,
            gso_v6: o.gso_v6,
        }
    }
}

/// The checked details a frontend published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRings {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn: EventChannels,
    /// What the frontend takes on its RX ring.
    pub rx: RxOffload,
}

/// The feature nodes the backend writes before InitWait.
pub fn backend_features() -> Vec<(&'static str, &'static str)> {
    vec![
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-sg", "1"),
        ("feature-split-event-channels", "1"),
        ("feature-no-csum-offload", "0"),
        ("feature-ipv6-csum-offload", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
    ]
}

fn number(key: &'static str, value: Option<String>) -> Result<Option<u32>, NegotiationError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| NegotiationError::NotANumber { key, value: v }),
    }
}

fn required(key: &'static str, value: Option<String>) -> Result<u32, NegotiationError> {
    number(key, value)?.ok_or(NegotiationError::Missing(key))
}

/// The frontend's nodes [`read_frontend`] reads.
const FRONTEND_KEYS: [&str; 13] = [
    "tx-ring-ref",
    "rx-ring-ref",
    "event-channel",
    "event-channel-tx",
    "event-channel-rx",
    "request-rx-copy",
    "multi-queue-num-queues",
    "feature-sg",
    "feature-no-csum-offload",
    "feature-ipv6-csum-offload",
    "feature-gso-tcpv4",
    "feature-gso-tcpv6",
    "feature-rx-notify",
];

/// The frontend's node values, by key.
struct Nodes(Vec<(&'static str, Option<String>)>);

impl Nodes {
    fn take(&mut self, key: &'static str) -> Option<String> {
        self.0
            .iter_mut()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.take())
    }

    /// A boolean feature: "1" is on; anything else (absent, "0", garbage) off.
    fn flag(&mut self, key: &'static str) -> bool {
        self.take(key).as_deref().map(str::trim) == Some("1")
    }
}

/// Reads the frontend's details through `read` (a node's value under the frontend
/// directory, `None` if absent).
pub fn read_frontend<E>(
    mut read: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<FrontendRings, NegotiationError>, E> {
    let mut v = Vec::with_capacity(FRONTEND_KEYS.len());
    for k in FRONTEND_KEYS {
        v.push((k, read(k)?));
    }
    Ok(check(Nodes(v)))
}

fn check(mut n: Nodes) -> Result<FrontendRings, NegotiationError> {
    if let Some(q) = number("multi-queue-num-queues", n.take("multi-queue-num-queues"))? {
        if q != 1 {
            return Err(NegotiationError::Queues(q));
        }
    }
    let tx_ring_ref = required("tx-ring-ref", n.take("tx-ring-ref"))?;
    let rx_ring_ref = required("rx-ring-ref", n.take("rx-ring-ref"))?;
    let evtchn = match number("event-channel-tx", n.take("event-channel-tx"))? {
        Some(tx) => EventChannels::Split {
            tx,
            rx: required("event-channel-rx", n.take("event-channel-rx"))?,
        },
        None => EventChannels::Shared(required("event-channel", n.take("event-channel"))?),
    };
    if number("request-rx-copy", n.take("request-rx-copy"))? != Some(1) {
        return Err(NegotiationError::NoRxCopy);
    }
    let rx = RxOffload {
        sg: n.flag("feature-sg"),
        csum_v4: !n.flag("feature-no-csum-offload"),
        csum_v6: n.flag("feature-ipv6-csum-offload"),
        gso_v4: n.flag("feature-gso-tcpv4"),
        gso_v6: n.flag("feature-gso-tcpv6"),
    };
    Ok(FrontendRings {
        tx_ring_ref,
        rx_ring_ref,
        evtchn,
        rx,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn front(nodes: &[(&str, &str)]) -> Result<FrontendRings, NegotiationError> {
        let m: HashMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read_frontend::<()>(|k| Ok(m.get(k).cloned())).unwrap()
    }

    const MINI_OS: &[(&str, &str)] = &[
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "9"),
        ("event-channel", "5"),
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
    ];

    #[test]
    fn one_and_split_channels() {
        assert_eq!(
            front(MINI_OS).unwrap(),
            FrontendRings {
                tx_ring_ref: 8,
                rx_ring_ref: 9,
                evtchn: EventChannels::Shared(5),
                rx: RxOffload {
                    csum_v4: true,
                    ..RxOffload::default()
                }
            }
        );
        let r = front(&[
            ("tx-ring-ref", "8"),
            ("rx-ring-ref", "9"),
            ("event-channel-tx", "5"),
            ("event-channel-rx", "6"),
            ("request-rx-copy", "1"),
            ("feature-sg", "1"),
            ("multi-queue-num-queues", "1"),
        ])
        .unwrap();
        assert_eq!(r.evtchn, EventChannels::Split { tx: 5, rx: 6 });
        assert!(r.rx.sg);
        let mut linux = MINI_OS.to_vec();
        linux.extend([
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
        ]);
        let r = front(&linux).unwrap().rx;
        assert!(r.sg && r.csum_v4 && r.csum_v6 && r.gso_v4 && r.gso_v6);
        let mut plain = MINI_OS.to_vec();
        plain.extend([
            ("feature-no-csum-offload", "1"),
            ("feature-gso-tcpv4", "yes"),
        ]);
        assert_eq!(front(&plain).unwrap().rx, RxOffload::default());
    }

    #[test]
    fn lies_are_refused() {
        let without = |key: &str| -> Vec<(&str, &str)> {
            MINI_OS.iter().copied().filter(|(k, _)| *k != key).collect()
        };
        assert_eq!(
            front(&without("tx-ring-ref")),
            Err(NegotiationError::Missing("tx-ring-ref"))
        );
        assert_eq!(
            front(&without("event-channel")),
            Err(NegotiationError::Missing("event-channel"))
        );
        assert_eq!(
            front(&without("request-rx-copy")),
            Err(NegotiationError::NoRxCopy)
        );
        let mut bad = without("rx-ring-ref");
        bad.push(("rx-ring-ref", "-1"));
        assert!(matches!(
            front(&bad),
            Err(NegotiationError::NotANumber { .. })
        ));
        let mut split = MINI_OS.to_vec();
        split.push(("event-channel-tx", "3"));
        assert_eq!(
            front(&split),
            Err(NegotiationError::Missing("event-channel-rx"))
        );
        let mut mq = MINI_OS.to_vec();
        mq.push(("multi-queue-num-queues", "4"));
        assert_eq!(front(&mq), Err(NegotiationError::Queues(4)));
    }

    #[test]
    fn features_offered() {
        let f = backend_features();
        assert!(f.contains(&("feature-rx-copy", "1")));
        assert!(f.contains(&("feature-sg", "1")));
        assert!(!f.iter().any(|(k, _)| *k == "multi-queue-max-queues"));
    }
}
