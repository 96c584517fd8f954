//! Save and restore inside one process (`rxen_vmm::snapshot`): the `memcheck` guest on
//! both layouts (rxen's and Xen's PV start of day) resumes counting after a restore;
//! images whose VMM state lies (ports, vCPUs, MMU counts, sizes) are refused with an
//! error, never a panic, and nothing runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::time::Duration;

use rxen_migration::{ImageItem, ImageReader, ImageWriter, RxenState};
use rxen_vmm::console::CaptureSink;
use rxen_vmm::domain::BootKind;
use rxen_vmm::snapshot::{restore, save, RestoreOptions};
use rxen_vmm::{Domain, DomainConfig};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn wait_tick(s: &CaptureSink, at_least: u64) -> u64 {
    wait_until(&format!("tick {at_least}"), WAIT, || {
        memcheck_last_tick(s).filter(|&t| t >= at_least)
    })
}

fn opts(domid: u16) -> RestoreOptions {
    RestoreOptions {
        name: "mc".into(),
        domid,
        console: Default::default(),
        start_paused: false,
    }
}

/// A running memcheck saved into memory after a few ticks; the domain is destroyed.
fn saved_image(kind: BootKind) -> (Vec<u8>, u64) {
    let image = std::fs::read(guest("memcheck")).expect("memcheck guest");
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: "mc".into(),
        cmdline: "mib=4 tick_ms=10".into(),
        ..Default::default()
    };
    let d = Domain::create_as(cfg, &image, Box::new(sink.clone()), kind).expect("create");
    wait_tick(&sink, 3);
    let mut out = Vec::new();
    save(d.shared(), &mut out, b"{}").expect("save");
    let at = memcheck_last_tick(&sink).unwrap();
    d.destroy();
    d.wait();
    (out, at)
}

fn round_trip(kind: BootKind) {
    let (image, at) = saved_image(kind);
    let sink = CaptureSink::default();
    let r = restore(image.as_slice(), opts(7), Box::new(sink.clone())).expect("restore");
    let (d, config) = (r.domain, r.toolstack_config);
    assert_eq!(config, b"{}");
    let resumed = wait_tick(&sink, at + 3);
    assert!(resumed > at, "{}", sink.text());
    let first = sink
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("memcheck: tick="))
        .and_then(|l| l.split(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(
        first > at && first <= at + 2,
        "saved at {at}, resumed at {first}"
    );
    d.destroy();
    d.wait();
}

#[test]
fn memcheck_resumes_after_restore_on_rxen_layout() {
    if !kvm_available("memcheck_resumes_after_restore_on_rxen_layout") {
        return;
    }
    round_trip(BootKind::Rxen);
}

#[test]
fn memcheck_resumes_after_restore_on_xen_pv_layout() {
    if !kvm_available("memcheck_resumes_after_restore_on_xen_pv_layout") {
        return;
    }
    round_trip(BootKind::XenPv);
}

/// `image` with its VMM state document changed by `edit`.
fn with_state(image: &[u8], edit: impl Fn(&mut Value)) -> Vec<u8> {
    let mut r = ImageReader::open(image).unwrap();
    let mut w = ImageWriter::new(Vec::new(), r.config()).unwrap();
    while let Some(item) = r.next_item().unwrap() {
        match item {
            ImageItem::Libxc(rec) => w.record(&rec).unwrap(),
            ImageItem::RxenState(s) => {
                let mut doc: Value = serde_json::from_slice(&s.document).unwrap();
                edit(&mut doc);
                w.rxen_state(&RxenState::new(serde_json::to_vec(&doc).unwrap()))
                    .unwrap();
            }
            ImageItem::End => {}
        }
    }
    w.finish().unwrap()
}

#[test]
fn lying_vmm_state_is_refused() {
    if !kvm_available("lying_vmm_state_is_refused") {
        return;
    }
    let (image, _) = saved_image(BootKind::XenPv);
    type Edit = fn(&mut Value);
    let lies: [(&str, Edit); 15] = [
        // `cr3` is at byte 240 of `kvm_sregs` (after 8 segments, GDT, IDT, cr0, cr2).
        ("cr3 on a frame that is no page table", |d| {
            d["vcpu_states"][0]["cpu"]["sregs"][242] = 0x3f.into()
        }),
        // `kvm_sregs` travels as its bytes: `cs.dpl` is byte 16, `idt.base` starts at 208.
        ("a vCPU in ring 0", |d| {
            d["vcpu_states"][0]["cpu"]["sregs"][16] = 0.into()
        }),
        ("an IDT of its own", |d| {
            d["vcpu_states"][0]["cpu"]["sregs"][209] = 0x10.into()
        }),
        ("a port on vCPU 99", |d| {
            d["evtchn"]["ports"][1][1] = 99.into()
        }),
        ("port 0 in use", |d| {
            d["evtchn"]["ports"][0][0] = "Ipi".into()
        }),
        ("no vCPUs", |d| d["vcpu_states"] = Value::Array(vec![])),
        ("33 vCPUs", |d| d["vcpus"] = 33.into()),
        ("an MMU reference too many", |d| {
            let frames = d["pv_mmu"]["frames"].as_array_mut().unwrap();
            let f = frames
                .iter_mut()
                .find(|f| f["refs"].as_u64() > Some(0))
                .unwrap();
            f["refs"] = (f["refs"].as_u64().unwrap() + 1).into();
        }),
        ("a PV domain without its MMU", |d| d["pv_mmu"] = Value::Null),
        ("a grant frame outside memory", |d| {
            d["grants"]["frames"][0] = (1u64 << 40).into()
        }),
        ("not JSON of the schema", |d| *d = "hello".into()),
        ("a device ring on a port out of range", |d| {
            d["devices"] = serde_json::json!({"vbds": [[51712, {"rings": [{"ring_refs": [8],
                "evtchn": 4000, "persistent": false, "req_cons": 0, "rsp_prod_pvt": 0,
                "persistent_grants": []}], "sectors": 8, "writable": true}]]})
        }),
        (
            "a vif on the xenstore port (bound, not unbound for domain 0)",
            |d| {
                let port = d["boot_channels"]["store_evtchn"].clone();
                d["devices"] = serde_json::json!({"vifs": [[0, {"tx_ring_ref": 8, "rx_ring_ref": 9,
                "evtchn": {"Shared": 0}, "rx_offload": {"sg": false, "csum_v4": false,
                "csum_v6": false, "gso_v4": false, "gso_v6": false}, "tx": [0, 0], "rx": [0, 0],
                "mac": "00:16:3e:00:00:01"}]]});
                d["devices"]["vifs"][0][1]["evtchn"]["Shared"] = port;
            },
        ),
        ("a suspend by a vCPU that does not exist", |d| {
            d["suspended_vcpu"] = 7.into()
        }),
        ("a suspended domain with device rings", |d| {
            d["suspended_vcpu"] = 0.into();
            d["devices"] = serde_json::json!({"vbds": [[51712, {"rings": [{"ring_refs": [8],
                "evtchn": 3, "persistent": false, "req_cons": 0, "rsp_prod_pvt": 0,
                "persistent_grants": []}], "sectors": 8, "writable": true}]]})
        }),
    ];
    for (what, edit) in lies {
        let bad = with_state(&image, edit);
        let sink = CaptureSink::default();
        match restore(bad.as_slice(), opts(8), Box::new(sink)) {
            Ok(r) => {
                let d = r.domain;
                d.destroy();
                d.wait();
                panic!("restored an image with {what}");
            }
            Err(e) => eprintln!("{what}: refused: {e}"),
        }
    }
    // Cut anywhere, the image is refused too.
    for cut in [0, 100, image.len() / 3, image.len() - 1] {
        let sink = CaptureSink::default();
        assert!(
            restore(&image[..cut], opts(9), Box::new(sink)).is_err(),
            "cut at {cut}"
        );
    }
}

/// Restores `image` from a file with `restore_file`; the guest must count on.
fn restore_from_file(image: &[u8], at: u64, kind: &str, mapped: bool) {
    let path = std::env::temp_dir().join(format!("rxen-snap-{kind}-{}.img", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let sink = CaptureSink::default();
    let restored =
        rxen_vmm::snapshot::restore_file(&file, opts(5), Box::new(sink.clone())).expect(kind);
    assert!(restored.devices.is_empty(), "{kind}: no devices were saved");
    let (d, config) = (restored.domain, restored.toolstack_config);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert_eq!(
        maps.contains(path.to_str().unwrap()),
        mapped,
        "{kind}: mapped pages of the image"
    );
    // The image may be replaced or removed while the domain runs on its mapping.
    drop(file);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        config, b"{}",
        "the padding of an aligned image is not config"
    );
    let resumed = wait_tick(&sink, at + 3);
    assert!(resumed > at, "{}", sink.text());
    d.destroy();
    d.wait();
}

#[test]
fn saved_images_are_page_aligned_and_restore_by_mapping() {
    if !kvm_available("saved_images_are_page_aligned_and_restore_by_mapping") {
        return;
    }
    let (image, at) = saved_image(BootKind::Rxen);
    // Every page's data starts on a page boundary of the file.
    let mut r = ImageReader::open(std::io::Cursor::new(&image)).unwrap();
    let mut batches = 0;
    while let Some(item) = r.next_indexed().unwrap() {
        if let rxen_migration::IndexedItem::Pages(p) = item {
            assert_eq!(p.data_offset % 4096, 0, "batch {batches}");
            batches += 1;
        }
    }
    assert!(batches > 0);
    restore_from_file(&image, at, "aligned", true);
    // An image whose pages are not aligned (another config length) is copied.
    let shifted = {
        let mut r = ImageReader::open(image.as_slice()).unwrap();
        let mut w = ImageWriter::new(Vec::new(), b"{}").unwrap();
        while let Some(item) = r.next_item().unwrap() {
            match item {
                ImageItem::Libxc(rec) => w.record(&rec).unwrap(),
                ImageItem::RxenState(s) => w.rxen_state(&s).unwrap(),
                ImageItem::End => {}
            }
        }
        w.finish().unwrap()
    };
    restore_from_file(&shifted, at, "unaligned", false);
    // A Xen PV domain is copied too (its MMU discards frames).
    let (pv, at) = saved_image(BootKind::XenPv);
    restore_from_file(&pv, at, "pv", false);
}

/// The `memcheck` ticks of `text` (complete lines), in order.
fn ticks_of(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("memcheck: tick=") && l.ends_with(" ok"))
        .filter_map(|l| l["memcheck: tick=".len()..].split(' ').next()?.parse().ok())
        .collect()
}

/// 100 save/restore cycles of a small guest, in memory: after each restore the
/// guest goes on counting (two more ticks, its memory checked on each) and across
/// all of them the counter never skips or goes back (a line the console had not yet
/// passed on at a save may come out once more after the restore).
#[test]
fn a_hundred_save_restore_cycles_keep_the_counter() {
    if !kvm_available("a_hundred_save_restore_cycles_keep_the_counter") {
        return;
    }
    let started = std::time::Instant::now();
    let (mut image, _) = saved_image(BootKind::Rxen);
    let mut text = String::new();
    for cycle in 0..100u16 {
        let sink = CaptureSink::default();
        let r = restore(image.as_slice(), opts(10 + cycle), Box::new(sink.clone()))
            .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let d = r.domain;
        let before = ticks_of(&text).last().copied().unwrap_or(0);
        wait_tick(&sink, before + 2);
        let mut out = Vec::new();
        save(d.shared(), &mut out, b"{}").unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        d.destroy();
        d.wait();
        text.push_str(&sink.text());
        assert!(!text.contains("FAILED"), "cycle {cycle}:\n{text}");
        image = out;
    }
    let ticks = ticks_of(&text);
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "the counter skipped or went back: {ticks:?}"
    );
    assert!(*ticks.last().unwrap() >= 200, "{ticks:?}");
    eprintln!("100 cycles in {} ms", started.elapsed().as_millis());
}
