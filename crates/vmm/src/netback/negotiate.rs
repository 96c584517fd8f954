//! What the backend offers in its xenbus directory and what it accepts from the
//! frontend's (io/netif.h, "Feature and Parameter Negotiation"), pure and tested alone.
//!
//! Offered: `feature-rx-copy` = 1, `feature-rx-flip` = 0, `feature-sg` = 1 (TX chains),
//! `feature-split-event-channels` = 1; no GSO, no checksum offload
//! (`feature-no-csum-offload` = 1), no multi-queue (`multi-queue-max-queues` absent).
//!
//! Read from the frontend (hostile: each value parsed strictly): `tx-ring-ref`,
//! `rx-ring-ref`, `event-channel` or both `event-channel-tx` and `event-channel-rx`,
//! `request-rx-copy` (must be 1: page flipping is not supported), `feature-sg` (RX
//! frames may span buffers), `multi-queue-num-queues` (absent or 1).

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventChannels {
    /// `event-channel`: one for both rings.
    Shared(u32),
    /// `event-channel-tx`, `event-channel-rx`.
    Split { tx: u32, rx: u32 },
}

/// The checked details a frontend published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRings {
    pub tx_ring_ref: u32,
    pub rx_ring_ref: u32,
    pub evtchn: EventChannels,
    /// RX frames may take more than one buffer.
    pub rx_sg: bool,
}

/// The feature nodes the backend writes before InitWait.
pub fn backend_features() -> Vec<(&'static str, &'static str)> {
    vec![
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-sg", "1"),
        ("feature-split-event-channels", "1"),
        ("feature-no-csum-offload", "1"),
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

/// Reads the frontend's details through `read` (a node's value under the frontend
/// directory, `None` if absent).
pub fn read_frontend<E>(
    mut read: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<FrontendRings, NegotiationError>, E> {
    let keys = [
        "tx-ring-ref",
        "rx-ring-ref",
        "event-channel",
        "event-channel-tx",
        "event-channel-rx",
        "request-rx-copy",
        "feature-sg",
        "multi-queue-num-queues",
    ];
    let mut v: Vec<Option<String>> = Vec::with_capacity(keys.len());
    for k in keys {
        v.push(read(k)?);
    }
    let mut it = v.into_iter();
    let mut next = || it.next().flatten();
    let (tx, rx, ev, ev_tx, ev_rx, copy, sg, queues) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    Ok(check(tx, rx, ev, ev_tx, ev_rx, copy, sg, queues))
}

#[allow(clippy::too_many_arguments)]
fn check(
    tx: Option<String>,
    rx: Option<String>,
    ev: Option<String>,
    ev_tx: Option<String>,
    ev_rx: Option<String>,
    copy: Option<String>,
    sg: Option<String>,
    queues: Option<String>,
) -> Result<FrontendRings, NegotiationError> {
    if let Some(q) = number("multi-queue-num-queues", queues)? {
        if q != 1 {
            return Err(NegotiationError::Queues(q));
        }
    }
    let tx_ring_ref = required("tx-ring-ref", tx)?;
    let rx_ring_ref = required("rx-ring-ref", rx)?;
    let evtchn = match number("event-channel-tx", ev_tx)? {
        Some(tx) => EventChannels::Split {
            tx,
            rx: required("event-channel-rx", ev_rx)?,
        },
        None => EventChannels::Shared(required("event-channel", ev)?),
    };
    if number("request-rx-copy", copy)? != Some(1) {
        return Err(NegotiationError::NoRxCopy);
    }
    Ok(FrontendRings {
        tx_ring_ref,
        rx_ring_ref,
        evtchn,
        rx_sg: sg.as_deref() == Some("1"),
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
                rx_sg: false
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
        assert!(r.rx_sg);
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
