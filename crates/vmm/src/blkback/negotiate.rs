//! What the backend offers in its xenbus directory and what it accepts from the
//! frontend's (blkif.h "Backend/Frontend XenBus Nodes"), kept apart from the xenbus
//! thread so that it is pure and tested alone.
//!
//! Offered: `feature-flush-cache`, `feature-persistent`, `feature-max-indirect-segments`
//! ([`MAX_INDIRECT_SEGMENTS`]), `max-ring-page-order` ([`MAX_RING_PAGE_ORDER`]) and, on a
//! writable disk, `feature-discard` with `discard-granularity`, `discard-alignment` and
//! `discard-secure` (0: a discard punches a hole, it does not erase securely).
//!
//! Read from the frontend (hostile: each value parsed strictly): `event-channel`,
//! `protocol` (absent or `x86_64-abi`), `ring-page-order` (absent: one page named by
//! `ring-ref`; present: `ring-ref0`.. for `1 << order` pages, with `ring-ref` accepted
//! for order 0) and `feature-persistent`.

use rxen_abi::blkif::XEN_IO_PROTO_ABI_X86_64;

use super::request::MAX_INDIRECT_SEGMENTS;
use super::ring::MAX_RING_PAGE_ORDER;

/// Why a frontend's details were refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("{0} is missing")]
    Missing(String),
    #[error("{key} {value:?} is not a number")]
    NotANumber { key: String, value: String },
    #[error("protocol {0:?} is not supported (only x86_64-abi)")]
    Protocol(String),
    #[error("ring-page-order {0} is larger than the {MAX_RING_PAGE_ORDER} offered")]
    RingOrder(u32),
}

/// The checked ring details a frontend published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRing {
    /// The ring's pages, `ring-ref0`.. (one for a one-page ring).
    pub ring_refs: Vec<u32>,
    pub evtchn: u32,
    /// Both ends offered `feature-persistent`.
    pub persistent: bool,
}

/// The feature nodes the backend writes before InitWait, for a disk that is
/// `writable` or not.
pub fn backend_features(writable: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("feature-flush-cache", "1".to_string()),
        ("feature-persistent", "1".to_string()),
        (
            "feature-max-indirect-segments",
            MAX_INDIRECT_SEGMENTS.to_string(),
        ),
        ("max-ring-page-order", MAX_RING_PAGE_ORDER.to_string()),
    ];
    if writable {
        v.extend([
            ("feature-discard", "1".to_string()),
            ("discard-granularity", "4096".to_string()),
            ("discard-alignment", "0".to_string()),
            ("discard-secure", "0".to_string()),
        ]);
    }
    v
}

fn number(key: &str, value: Option<String>) -> Result<Option<u32>, NegotiationError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| NegotiationError::NotANumber {
                key: key.to_string(),
                value: v,
            }),
    }
}

/// Reads the frontend's ring details through `read` (a node's value under the
/// frontend directory, `None` if absent).
pub fn read_frontend<E>(
    mut read: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<FrontendRing, NegotiationError>, E> {
    let protocol = read("protocol")?;
    let order = read("ring-page-order")?;
    let evtchn = read("event-channel")?;
    let persistent = read("feature-persistent")?;
    let order = match number("ring-page-order", order) {
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    let names: Vec<String> = match order {
        None => vec!["ring-ref".to_string()],
        Some(o) if o > MAX_RING_PAGE_ORDER => return Ok(Err(NegotiationError::RingOrder(o))),
        Some(o) => (0..1u32 << o).map(|i| format!("ring-ref{i}")).collect(),
    };
    let mut refs = Vec::with_capacity(names.len());
    for name in &names {
        let mut v = read(name)?;
        if v.is_none() && order == Some(0) {
            v = read("ring-ref")?;
        }
        refs.push((name.clone(), v));
    }
    Ok(check(protocol, evtchn, persistent, refs))
}

fn check(
    protocol: Option<String>,
    evtchn: Option<String>,
    persistent: Option<String>,
    refs: Vec<(String, Option<String>)>,
) -> Result<FrontendRing, NegotiationError> {
    if let Some(p) = protocol {
        if p != XEN_IO_PROTO_ABI_X86_64 {
            return Err(NegotiationError::Protocol(p));
        }
    }
    let mut ring_refs = Vec::with_capacity(refs.len());
    for (name, v) in refs {
        ring_refs.push(number(&name, v)?.ok_or(NegotiationError::Missing(name))?);
    }
    let evtchn = number("event-channel", evtchn)?
        .ok_or_else(|| NegotiationError::Missing("event-channel".into()))?;
    // Anything but "1" (absent, "0", garbage) means no persistent grants.
    let persistent = persistent.as_deref() == Some("1");
    Ok(FrontendRing {
        ring_refs,
        evtchn,
        persistent,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn front(nodes: &[(&str, &str)]) -> Result<FrontendRing, NegotiationError> {
        let m: HashMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read_frontend::<()>(|k| Ok(m.get(k).cloned())).unwrap()
    }

    #[test]
    fn one_and_many_page_rings() {
        assert_eq!(
            front(&[("ring-ref", "8"), ("event-channel", "5")]).unwrap(),
            FrontendRing {
                ring_refs: vec![8],
                evtchn: 5,
                persistent: false
            }
        );
        let r = front(&[
            ("ring-page-order", "2"),
            ("ring-ref0", "10"),
            ("ring-ref1", "11"),
            ("ring-ref2", "12"),
            ("ring-ref3", "13"),
            ("event-channel", "5"),
            ("protocol", "x86_64-abi"),
            ("feature-persistent", "1"),
        ])
        .unwrap();
        assert_eq!(r.ring_refs, vec![10, 11, 12, 13]);
        assert!(r.persistent);
        // Order 0 with the one-page name is accepted too.
        assert_eq!(
            front(&[
                ("ring-page-order", "0"),
                ("ring-ref", "8"),
                ("event-channel", "5")
            ])
            .unwrap()
            .ring_refs,
            vec![8]
        );
    }

    #[test]
    fn lies_are_refused() {
        assert_eq!(
            front(&[("ring-page-order", "5"), ("event-channel", "5")]),
            Err(NegotiationError::RingOrder(5))
        );
        assert_eq!(
            front(&[
                ("ring-page-order", "1"),
                ("ring-ref0", "1"),
                ("event-channel", "5")
            ]),
            Err(NegotiationError::Missing("ring-ref1".into()))
        );
        assert!(matches!(
            front(&[("ring-page-order", "-1"), ("event-channel", "5")]),
            Err(NegotiationError::NotANumber { .. })
        ));
        assert!(matches!(
            front(&[("ring-ref", "0x10"), ("event-channel", "5")]),
            Err(NegotiationError::NotANumber { .. })
        ));
        assert_eq!(
            front(&[("ring-ref", "8")]),
            Err(NegotiationError::Missing("event-channel".into()))
        );
        assert!(matches!(
            front(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "x86_32-abi")
            ]),
            Err(NegotiationError::Protocol(_))
        ));
        assert!(
            !front(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("feature-persistent", "yes")
            ])
            .unwrap()
            .persistent
        );
    }

    #[test]
    fn features_offered() {
        let w = backend_features(true);
        let get = |k: &str| w.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("feature-persistent").as_deref(), Some("1"));
        assert_eq!(get("feature-max-indirect-segments").as_deref(), Some("256"));
        assert_eq!(get("max-ring-page-order").as_deref(), Some("4"));
        assert_eq!(get("feature-discard").as_deref(), Some("1"));
        assert!(!backend_features(false)
            .iter()
            .any(|(k, _)| *k == "feature-discard"));
    }
}
