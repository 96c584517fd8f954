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
    #[error("multi-queue-num-queues {requested} is not between 1 and the {max} offered")]
    Queues { requested: u32, max: u32 },
    #[error("grant {0} is named as a ring page twice")]
    SharedRingPage(u32),
}

/// Most queues (rings) offered per vbd, whatever the host.
pub const MAX_QUEUES: u32 = 4;

/// `multi-queue-max-queues` for this host: [`MAX_QUEUES`] or its CPU count if lower
/// (each queue has its own ring thread and I/O workers).
pub fn max_queues() -> u32 {
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    cpus.clamp(1, MAX_QUEUES)
}

/// The checked details of one of a frontend's rings (one per queue).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendRing {
    /// The ring's pages, `ring-ref0`.. (one for a one-page ring).
    pub ring_refs: Vec<u32>,
    pub evtchn: u32,
    /// Both ends offered `feature-persistent`.
    pub persistent: bool,
}

/// The feature nodes the backend writes before InitWait, for a disk that is
/// `writable` or not, offering `max_queues` queues.
pub fn backend_features(writable: bool, max_queues: u32) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("multi-queue-max-queues", max_queues.to_string()),
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
/// frontend directory, `None` if absent), accepting up to `max_queues` queues: one
/// [`FrontendRing`] per queue, in queue order.
pub fn read_frontend<E>(
    max_queues: u32,
    mut read: impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<Vec<FrontendRing>, NegotiationError>, E> {
    let protocol = read("protocol")?;
    let order = read("ring-page-order")?;
    let persistent = read("feature-persistent")?;
    let queues = read("multi-queue-num-queues")?;
    if let Some(p) = protocol {
        if p != XEN_IO_PROTO_ABI_X86_64 {
            return Ok(Err(NegotiationError::Protocol(p)));
        }
    }
    let order = match number("ring-page-order", order) {
        Ok(Some(o)) if o > MAX_RING_PAGE_ORDER => return Ok(Err(NegotiationError::RingOrder(o))),
        Ok(o) => o,
        Err(e) => return Ok(Err(e)),
    };
    let queues = match number("multi-queue-num-queues", queues) {
        Ok(None) => 1,
        Ok(Some(n)) if (1..=max_queues.max(1)).contains(&n) => n,
        Ok(Some(n)) => {
            return Ok(Err(NegotiationError::Queues {
                requested: n,
                max: max_queues.max(1),
            }))
        }
        Err(e) => return Ok(Err(e)),
    };
    // Anything but "1" (absent, "0", garbage) means no persistent grants.
    let persistent = persistent.as_deref() == Some("1");
    let mut rings = Vec::with_capacity(queues as usize);
    for q in 0..queues {
        // One queue keeps the flat layout of frontends that know nothing of queues.
        let dir = if queues == 1 {
            String::new()
        } else {
            format!("queue-{q}/")
        };
        match read_queue(&dir, order, persistent, &mut read)? {
            Ok(r) => rings.push(r),
            Err(e) => return Ok(Err(e)),
        }
    }
    // Two rings (or two pages of one) on one page would serve each other's slots.
    let mut seen = std::collections::BTreeSet::new();
    for gref in rings.iter().flat_map(|r| &r.ring_refs) {
        if !seen.insert(*gref) {
            return Ok(Err(NegotiationError::SharedRingPage(*gref)));
        }
    }
    Ok(Ok(rings))
}

/// Reads one queue's `ring-ref*` and `event-channel` under `dir` (empty or `queue-N/`).
fn read_queue<E>(
    dir: &str,
    order: Option<u32>,
    persistent: bool,
    read: &mut impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<FrontendRing, NegotiationError>, E> {
    let names: Vec<String> = match order {
        None => vec![format!("{dir}ring-ref")],
        Some(o) => (0..1u32 << o)
            .map(|i| format!("{dir}ring-ref{i}"))
            .collect(),
    };
    let mut refs = Vec::with_capacity(names.len());
    for name in names {
        let mut v = read(&name)?;
        if v.is_none() && order == Some(0) {
            v = read(&format!("{dir}ring-ref"))?;
        }
        refs.push((name, v));
    }
    let evtchn_key = format!("{dir}event-channel");
    let evtchn = read(&evtchn_key)?;
    Ok(check(evtchn_key, evtchn, persistent, refs))
}

fn check(
    evtchn_key: String,
    evtchn: Option<String>,
    persistent: bool,
    refs: Vec<(String, Option<String>)>,
) -> Result<FrontendRing, NegotiationError> {
    let mut ring_refs = Vec::with_capacity(refs.len());
    for (name, v) in refs {
        ring_refs.push(number(&name, v)?.ok_or(NegotiationError::Missing(name))?);
    }
    let evtchn = number(&evtchn_key, evtchn)?.ok_or(NegotiationError::Missing(evtchn_key))?;
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

    fn fronts(nodes: &[(&str, &str)]) -> Result<Vec<FrontendRing>, NegotiationError> {
        let m: HashMap<String, String> = nodes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        read_frontend::<()>(4, |k| Ok(m.get(k).cloned())).unwrap()
    }

    fn front(nodes: &[(&str, &str)]) -> Result<FrontendRing, NegotiationError> {
        let mut rings = fronts(nodes)?;
        assert_eq!(rings.len(), 1);
        Ok(rings.remove(0))
    }

    #[test]
    fn queues_have_their_own_directories() {
        let rings = fronts(&[
            ("multi-queue-num-queues", "2"),
            ("ring-page-order", "1"),
            ("feature-persistent", "1"),
            ("queue-0/ring-ref0", "10"),
            ("queue-0/ring-ref1", "11"),
            ("queue-0/event-channel", "5"),
            ("queue-1/ring-ref0", "20"),
            ("queue-1/ring-ref1", "21"),
            ("queue-1/event-channel", "6"),
            // Flat keys are ignored once there are queues.
            ("ring-ref0", "99"),
            ("event-channel", "98"),
        ])
        .unwrap();
        assert_eq!(
            rings,
            vec![
                FrontendRing {
                    ring_refs: vec![10, 11],
                    evtchn: 5,
                    persistent: true
                },
                FrontendRing {
                    ring_refs: vec![20, 21],
                    evtchn: 6,
                    persistent: true
                },
            ]
        );
        // Four one-page queues (the most offered here), `ring-ref` named as for one ring.
        let mut nodes = vec![("multi-queue-num-queues".to_string(), "4".to_string())];
        for q in 0..4 {
            nodes.push((format!("queue-{q}/ring-ref"), (30 + q).to_string()));
            nodes.push((format!("queue-{q}/event-channel"), (7 + q).to_string()));
        }
        let refs: Vec<(&str, &str)> = nodes.iter().map(|(k, v)| (&**k, &**v)).collect();
        let rings = fronts(&refs).unwrap();
        assert_eq!(rings.len(), 4);
        assert_eq!(rings[3].ring_refs, vec![33]);
        assert_eq!(rings[3].evtchn, 10);
        // One queue asked for explicitly keeps the flat layout.
        assert_eq!(
            front(&[
                ("multi-queue-num-queues", "1"),
                ("ring-ref", "8"),
                ("event-channel", "5")
            ])
            .unwrap()
            .ring_refs,
            vec![8]
        );
    }

    #[test]
    fn bad_queue_counts_and_missing_queue_keys_are_refused() {
        for (n, requested) in [("0", 0), ("5", 5), ("4294967295", u32::MAX)] {
            assert_eq!(
                fronts(&[
                    ("multi-queue-num-queues", n),
                    ("ring-ref", "8"),
                    ("event-channel", "5")
                ]),
                Err(NegotiationError::Queues { requested, max: 4 }),
                "{n}"
            );
        }
        assert!(matches!(
            fronts(&[("multi-queue-num-queues", "two")]),
            Err(NegotiationError::NotANumber { .. })
        ));
        // Queue 1's event channel is missing.
        assert_eq!(
            fronts(&[
                ("multi-queue-num-queues", "2"),
                ("queue-0/ring-ref", "8"),
                ("queue-0/event-channel", "5"),
                ("queue-1/ring-ref", "9"),
            ]),
            Err(NegotiationError::Missing("queue-1/event-channel".into()))
        );
        // Flat keys do not stand in for a queue's.
        assert_eq!(
            fronts(&[
                ("multi-queue-num-queues", "2"),
                ("ring-ref", "8"),
                ("event-channel", "5"),
            ]),
            Err(NegotiationError::Missing("queue-0/ring-ref".into()))
        );
        // Queues on one page are refused.
        assert_eq!(
            fronts(&[
                ("multi-queue-num-queues", "2"),
                ("queue-0/ring-ref", "8"),
                ("queue-0/event-channel", "5"),
                ("queue-1/ring-ref", "8"),
                ("queue-1/event-channel", "6"),
            ]),
            Err(NegotiationError::SharedRingPage(8))
        );
        assert_eq!(
            fronts(&[
                ("ring-page-order", "1"),
                ("ring-ref0", "3"),
                ("ring-ref1", "3"),
                ("event-channel", "5"),
            ]),
            Err(NegotiationError::SharedRingPage(3))
        );
        // A backend that offers one queue refuses two.
        let m: HashMap<&str, &str> = [("multi-queue-num-queues", "2")].into_iter().collect();
        assert_eq!(
            read_frontend::<()>(1, |k| Ok(m.get(k).map(|v| v.to_string()))).unwrap(),
            Err(NegotiationError::Queues {
                requested: 2,
                max: 1
            })
        );
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
        let w = backend_features(true, 3);
        let get = |k: &str| w.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(get("feature-persistent").as_deref(), Some("1"));
        assert_eq!(get("feature-max-indirect-segments").as_deref(), Some("256"));
        assert_eq!(get("max-ring-page-order").as_deref(), Some("4"));
        assert_eq!(get("feature-discard").as_deref(), Some("1"));
        assert_eq!(get("multi-queue-max-queues").as_deref(), Some("3"));
        assert!((1..=MAX_QUEUES).contains(&max_queues()));
        assert!(!backend_features(false, 1)
            .iter()
            .any(|(k, _)| *k == "feature-discard"));
    }
}
