//! Round trips, strict rejection of garbage (never a panic), and Xen's own checker.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rxen_migration::libxc::TscInfo;
use rxen_migration::{
    ImageItem, ImageReader, ImageWriter, IndexedItem, PageBatch, PageType, PfnEntry, Record,
    RxenState, StreamError, VcpuRecordKind, PAGE_SIZE,
};

fn page_type() -> impl Strategy<Value = PageType> {
    prop_oneof![
        Just(PageType::Normal),
        (1u8..=4, any::<bool>()).prop_map(|(level, pinned)| PageType::Table { level, pinned }),
        Just(PageType::Broken),
        Just(PageType::AllocOnly),
        Just(PageType::Absent),
    ]
}

fn batch() -> impl Strategy<Value = Record> {
    prop::collection::vec((0u64..(1 << 52), page_type(), any::<u8>()), 1..6).prop_map(|v| {
        let entries: Vec<PfnEntry> = v.iter().map(|&(pfn, ty, _)| PfnEntry { pfn, ty }).collect();
        let data = v
            .iter()
            .filter(|(_, ty, _)| ty.has_data())
            .flat_map(|&(_, _, fill)| std::iter::repeat_n(fill, PAGE_SIZE))
            .collect();
        Record::PageData(rxen_migration::PageBatch { entries, data })
    })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        batch(),
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u64>(), 0..4)
        )
            .prop_map(|(a, b, frames)| Record::X86PvP2mFrames {
                start_pfn: a.min(b),
                end_pfn: a.max(b),
                frames
            }),
        (
            prop_oneof![
                Just(VcpuRecordKind::Basic),
                Just(VcpuRecordKind::Extended),
                Just(VcpuRecordKind::Xsave)
            ],
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(kind, vcpu_id, data)| Record::X86PvVcpu {
                kind,
                vcpu_id,
                data
            }),
        any::<u8>().prop_map(|b| Record::SharedInfo(vec![b; PAGE_SIZE])),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
            |(mode, khz, nsec, incarnation)| {
                Record::X86TscInfo(TscInfo {
                    mode,
                    khz,
                    nsec,
                    incarnation,
                })
            }
        ),
    ]
}

fn write_image(config: &[u8], records: &[Record], state: &[u8]) -> Vec<u8> {
    let mut w = ImageWriter::new(Vec::new(), config).unwrap();
    w.record(&Record::X86PvInfo {
        guest_width: 8,
        pt_levels: 4,
    })
    .unwrap();
    w.record(&Record::StaticDataEnd).unwrap();
    for r in records {
        w.record(r).unwrap();
    }
    w.record(&Record::End).unwrap();
    w.rxen_state(&RxenState::new(state.to_vec())).unwrap();
    w.finish().unwrap()
}

fn read_all(bytes: &[u8]) -> Result<(Vec<u8>, Vec<ImageItem>), StreamError> {
    let mut r = ImageReader::open(bytes)?;
    let mut items = Vec::new();
    while let Some(i) = r.next_item()? {
        items.push(i);
    }
    Ok((r.config().to_vec(), items))
}

proptest! {
    #[test]
    fn write_then_read_round_trips(
        config in prop::collection::vec(any::<u8>(), 0..64),
        records in prop::collection::vec(record(), 0..6),
        state in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = write_image(&config, &records, &state);
        let (got_config, items) = read_all(&bytes).unwrap();
        prop_assert_eq!(got_config, config);
        let mut expect = vec![
            ImageItem::Libxc(Record::X86PvInfo { guest_width: 8, pt_levels: 4 }),
            ImageItem::Libxc(Record::StaticDataEnd),
        ];
        expect.extend(records.into_iter().map(ImageItem::Libxc));
        expect.push(ImageItem::Libxc(Record::End));
        expect.push(ImageItem::RxenState(RxenState::new(state)));
        expect.push(ImageItem::End);
        prop_assert_eq!(items, expect);
    }

    #[test]
    fn any_bytes_are_parsed_or_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn a_valid_image_with_any_byte_changed_or_cut_never_panics(
        records in prop::collection::vec(record(), 0..3),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = write_image(b"{}", &records, b"{\"a\":1}");
        let i = at.index(bytes.len());
        bytes[i] = value;
        let _ = read_all(&bytes);
        let c = cut.index(bytes.len());
        prop_assert!(read_all(&bytes[..c]).is_err(), "a cut image must be refused");
    }
}

#[test]
fn truncation_and_garbage_are_typed_errors() {
    let bytes = write_image(b"{}", &[], b"{}");
    assert!(matches!(read_all(b"hello"), Err(StreamError::NotAnImage)));
    assert!(matches!(
        read_all(&bytes[..bytes.len() - 4]),
        Err(StreamError::Truncated(_))
    ));
    let mut unknown = bytes.clone();
    // The first libxc record after the headers (X86_PV_INFO): make its type unknown.
    let pos = 32 + 16 + 2 + 16 + 8 + 24 + 16;
    unknown[pos] = 0x7f;
    assert!(
        matches!(read_all(&unknown), Err(StreamError::UnknownRecord { .. })),
        "{:?}",
        read_all(&unknown)
    );
}

/// Runs Xen's `verify-stream-v2` on `image`; `None` if the tool is missing.
fn xen_verify(image: &[u8]) -> Option<(bool, String)> {
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    if !std::path::Path::new(tool).exists() {
        eprintln!("SKIPPED xen_checker: {tool} is missing (apt-get install xen-utils-4.17)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("rxen-migration-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("image");
    std::fs::write(&path, image).unwrap();
    let out = std::process::Command::new("python3")
        .arg(tool)
        .args(["-f", "xl", "-v", "-i"])
        .arg(&path)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Some((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn xen_checker_accepts_our_images() {
    let records = vec![
        Record::X86PvP2mFrames {
            start_pfn: 0,
            end_pfn: 15,
            frames: vec![3],
        },
        Record::PageData(rxen_migration::PageBatch {
            entries: vec![
                PfnEntry {
                    pfn: 1,
                    ty: PageType::Normal,
                },
                PfnEntry {
                    pfn: 2,
                    ty: PageType::Table {
                        level: 4,
                        pinned: true,
                    },
                },
                PfnEntry {
                    pfn: 3,
                    ty: PageType::Absent,
                },
            ],
            data: vec![7; 2 * PAGE_SIZE],
        }),
        Record::X86TscInfo(TscInfo {
            mode: 0,
            khz: 2_000_000,
            nsec: 5,
            incarnation: 0,
        }),
        Record::SharedInfo(vec![0; PAGE_SIZE]),
        Record::X86PvVcpu {
            kind: VcpuRecordKind::Basic,
            vcpu_id: 0,
            data: vec![1; 40],
        },
        Record::X86PvVcpu {
            kind: VcpuRecordKind::Msrs,
            vcpu_id: 0,
            data: vec![0; 16],
        },
    ];
    let image = write_image(b"{\"name\":\"x\"}", &records, b"{\"vcpus\":[]}");
    let Some((ok, out)) = xen_verify(&image) else {
        return;
    };
    assert!(ok, "verify-stream-v2 refused our image:\n{out}");
    assert!(out.contains("Emulator context"), "{out}");
    // And it refuses a corrupted one, so the check above means something.
    let mut bad = image.clone();
    let n = bad.len();
    bad[n - 8] = 9; // libxl END's type
    let (ok, out) = xen_verify(&bad).unwrap_or((false, String::new()));
    assert!(!ok, "verify-stream-v2 accepted a corrupted image:\n{out}");
}

/// Found while building the VMM's save: a page-table level outside 1..=4 (the VMM's
/// `Level` enum counts from 0) wrote type code 8, which Xen's checker and our reader
/// refuse. The writer refuses it instead of producing a broken image.
#[test]
fn the_writer_refuses_page_table_levels_xen_has_not() {
    for level in [0u8, 5, 7] {
        let mut w = ImageWriter::new(Vec::new(), b"").unwrap();
        let e = [PfnEntry {
            pfn: 1,
            ty: PageType::Table {
                level,
                pinned: true,
            },
        }];
        assert!(
            matches!(
                w.page_batch(&e, &[0; PAGE_SIZE]),
                Err(StreamError::Unwritable(_))
            ),
            "level {level}"
        );
    }
}

/// Every item through `next_indexed`; page batches come back as the pages they index.
fn read_indexed(bytes: &[u8]) -> Result<Vec<ImageItem>, StreamError> {
    let mut r = ImageReader::open(std::io::Cursor::new(bytes))?;
    let mut items = Vec::new();
    while let Some(i) = r.next_indexed()? {
        items.push(match i {
            IndexedItem::Item(i) => i,
            IndexedItem::Pages(p) => {
                let n = p.entries.iter().filter(|e| e.ty.has_data()).count();
                let at = p.data_offset as usize;
                ImageItem::Libxc(Record::PageData(PageBatch {
                    entries: p.entries,
                    data: bytes[at..at + n * PAGE_SIZE].to_vec(),
                }))
            }
        });
    }
    Ok(items)
}

proptest! {
    #[test]
    fn indexed_reading_finds_the_same_pages(
        records in prop::collection::vec(record(), 0..6),
    ) {
        let bytes = write_image(b"{}", &records, b"{}");
        let (_, plain) = read_all(&bytes).unwrap();
        prop_assert_eq!(read_indexed(&bytes).unwrap(), plain);
    }

    #[test]
    fn indexed_reading_of_a_changed_or_cut_image_never_panics(
        records in prop::collection::vec(record(), 0..3),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = write_image(b"{}", &records, b"{\"a\":1}");
        let i = at.index(bytes.len());
        bytes[i] = value;
        let _ = read_indexed(&bytes);
        let c = cut.index(bytes.len());
        prop_assert!(read_indexed(&bytes[..c]).is_err(), "a cut image must be refused");
    }
}
