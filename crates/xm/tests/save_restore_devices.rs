//! Issue 11, devices: domains with disks (and vifs) are saved and restored
//! transparently — the guest does not take part; the VMM's backends are quiesced
//! (every block request taken is answered) and serve the same rings again in the
//! restored domain. The `blkbench` guest in soak mode writes and reads back its disk
//! in rounds while it is saved and restored: no acknowledged write may be lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{kvm_available, Env};
use serde_json::Value;

use common::soak::{rounds, BLOCKS};

const NAME: &str = "soak";

fn console(env: &Env, name: &str) -> String {
    common::soak::console(env, name)
}

fn wait_for_round(env: &Env, at_least: u64) -> String {
    common::soak::wait_for_round(env, NAME, at_least)
}

/// blkbench's pattern word at byte `off` of the disk after round `gen`.
fn pattern(off: u64, gen: u64) -> u64 {
    (off / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (gen << 56) ^ 0x5a5a
}

/// The round whose pattern 4 KiB block `b` of `disk` holds, if any of `candidates`.
fn block_round(disk: &[u8], b: u64, candidates: &[u64]) -> Option<u64> {
    let off = b * 4096;
    let block = &disk[off as usize..off as usize + 4096];
    candidates.iter().copied().find(|&g| {
        block.chunks_exact(8).enumerate().all(|(i, w)| {
            u64::from_le_bytes(w.try_into().unwrap()) == pattern(off + i as u64 * 8, g)
        })
    })
}

fn create_soak(env: &Env, disk: &std::path::Path) {
    common::soak::create(env, NAME, disk)
}

fn domid_of(env: &Env) -> u64 {
    let (s, v) = env.get(&format!("/domains/{NAME}"));
    assert_eq!(s, 200, "{v}");
    v["domid"].as_u64().expect("domid")
}

#[test]
fn a_disk_writing_guest_is_saved_and_restored_without_losing_writes() {
    if !kvm_available("a_disk_writing_guest_is_saved_and_restored_without_losing_writes") {
        return;
    }
    let env = Env::start("save-disk");
    let disk = env.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    create_soak(&env, &disk);
    let mut seen = 3;
    for round in 0..3 {
        let before = wait_for_round(&env, seen);
        let last_before = *rounds(&before).last().unwrap();
        let image = env.dir.join(format!("soak-{round}.save"));
        env.xm_ok(&["save", NAME, image.to_str().unwrap()]);
        assert_eq!(env.get(&format!("/domains/{NAME}")).0, 404);
        // The domain is gone and its disk quiet. The guest was writing round R+1
        // over round R (R >= the last round seen, the console lags a little): blocks
        // 0..k hold R+1, the rest R. A lost write that was acknowledged would leave
        // an older round among them.
        let bytes = std::fs::read(&disk).unwrap();
        let window: Vec<u64> = (last_before..last_before + 200).collect();
        let held: Vec<u64> = (0..BLOCKS)
            .map(|b| {
                block_round(&bytes, b, &window).unwrap_or_else(|| {
                    panic!("round {round}: block {b} holds no recent round's data")
                })
            })
            .collect();
        let (lo, hi) = (*held.iter().min().unwrap(), *held.iter().max().unwrap());
        assert!(
            hi - lo <= 1 && held.windows(2).all(|w| w[0] >= w[1]),
            "round {round}: the disk is not rounds R+1 then R: {held:?}"
        );
        env.xm_ok(&["restore", image.to_str().unwrap()]);
        let domid = domid_of(&env);
        // xend wrote the frontend as the guest had left it: Connected, same ring.
        let mut xs = env.xenstore();
        let front = format!("/local/domain/{domid}/device/vbd/51712");
        assert_eq!(xs.read(0, &format!("{front}/state")).unwrap(), b"4");
        assert!(xs.read(0, &format!("{front}/event-channel")).is_ok());
        let after = wait_for_round(&env, last_before + 3);
        let resumed = rounds(&after);
        assert!(
            resumed[0] > last_before && (lo..=hi + 1).contains(&resumed[0]),
            "round {round}: {last_before} seen before the save, the disk held rounds {lo}..={hi}, resumed at {}:\n{after}",
            resumed[0]
        );
        assert!(
            resumed.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: rounds jumped: {resumed:?}"
        );
        seen = *resumed.last().unwrap() + 3;
    }
    // A checkpoint (`-c`): the guest keeps its disk and goes on.
    let image = env.dir.join("soak-c.save");
    let at = *rounds(&console(&env, NAME)).last().unwrap();
    env.xm_ok(&["save", "-c", NAME, image.to_str().unwrap()]);
    wait_for_round(&env, at + 5);
    env.xm_ok(&["destroy", NAME]);
}

fn curl(net: &common::netns::TestNet, url: &str) -> Option<String> {
    net.curl(url)
}

fn requests(net: &common::netns::TestNet, ip: &str) -> u64 {
    let mut n = 0;
    rxen_testkit::wait_until("curl to get /stats", Duration::from_secs(60), || {
        let Some(body) = curl(net, &format!("http://{ip}/stats")) else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        match v["requests"].as_u64() {
            Some(r) => {
                n = r;
                true
            }
            None => false,
        }
    });
    n
}

/// The httpd guest on a test bridge, saved and restored (and checkpointed with
/// `-c`), answers curl again at the same address; its request counter goes on from
/// where it was (the same guest, not a new one).
#[test]
fn the_httpd_guest_answers_curl_after_save_and_restore() {
    const TEST: &str = "the_httpd_guest_answers_curl_after_save_and_restore";
    if !kvm_available(TEST) {
        return;
    }
    let Some(net) = common::netns::test_net(TEST) else {
        return;
    };
    let env = Env::start("save-httpd");
    let ip = net.addr(2);
    let cfg = env.dir.join("httpd.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"web\"\nkernel = \"{}\"\nmemory = 64\nvif = [ 'bridge={},vifname={}' ]\nextra = \"ip={ip}/24\"\non_crash = \"preserve\"\n",
            rxen_testkit::guest("httpd").display(),
            net.bridge,
            net.tap_name(0)
        ),
    )
    .unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let mut last = requests(&net, &ip);
    for round in 0..2 {
        let image = env.dir.join(format!("web-{round}.save"));
        env.xm_ok(&["save", "web", image.to_str().unwrap()]);
        env.xm_ok(&["restore", image.to_str().unwrap()]);
        let page = {
            let mut page = String::new();
            rxen_testkit::wait_until("curl after the restore", Duration::from_secs(60), || {
                page = curl(&net, &format!("http://{ip}/")).unwrap_or_default();
                !page.is_empty()
            });
            page
        };
        assert!(page.contains("Hello from an rxen guest"), "{page}");
        let now = requests(&net, &ip);
        assert!(
            now > last + 1,
            "round {round}: {last} requests before, {now} after"
        );
        last = now;
    }
    let image = env.dir.join("web-c.save");
    env.xm_ok(&["save", "-c", "web", image.to_str().unwrap()]);
    let now = requests(&net, &ip);
    assert!(now > last, "after -c: {last} requests before, {now} after");
    env.xm_ok(&["destroy", "web"]);
}

/// `image` with its VMM state document changed by `edit`.
fn with_state(image: &[u8], edit: impl Fn(&mut Value)) -> Vec<u8> {
    use rxen_migration::{ImageItem, ImageReader, ImageWriter, RxenState};
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

/// Device state that lies (a ring page not granted to domain 0, a device the
/// configuration does not have, a port out of range) is refused at restore: an
/// error, no domain left, the disk free for the honest image.
#[test]
fn lying_device_state_is_refused_at_restore() {
    if !kvm_available("lying_device_state_is_refused_at_restore") {
        return;
    }
    let env = Env::start("save-disk-lies");
    let disk = env.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    create_soak(&env, &disk);
    wait_for_round(&env, 2);
    let image = env.dir.join("soak.save");
    env.xm_ok(&["save", NAME, image.to_str().unwrap()]);
    let good = std::fs::read(&image).unwrap();
    type Lie = fn(&mut Value);
    let lies: [(&str, Lie); 4] = [
        ("a ring page not granted", |d| {
            d["devices"]["vbds"][0][1]["rings"][0]["ring_refs"] = serde_json::json!([4000])
        }),
        ("a vbd the configuration does not have", |d| {
            d["devices"]["vbds"][0][0] = 1234.into()
        }),
        ("a port out of range", |d| {
            d["devices"]["vbds"][0][1]["rings"][0]["evtchn"] = 70000.into()
        }),
        ("another disk size", |d| {
            d["devices"]["vbds"][0][1]["sectors"] = 1.into()
        }),
    ];
    for (what, lie) in lies {
        let bad = env.dir.join("lie.save");
        std::fs::write(&bad, with_state(&good, lie)).unwrap();
        let o = env.xm(&["restore", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: restored");
        eprintln!("{what}: {err}");
        let (_, list) = env.get("/domains");
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{what}: {list}");
    }
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    wait_for_round(&env, 3);
    env.xm_ok(&["destroy", NAME]);
}

/// Reads counted in Mini-OS's block test progress lines (`N read, M write`).
fn mini_os_reads(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.ends_with(" write") && l.contains(" read, "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect()
}

/// An unmodified Xen PV kernel with a disk (Mini-OS's block test, which knows
/// nothing of rxen and does not support suspend) is saved and restored
/// transparently and keeps reading and writing its disk.
#[test]
fn mini_os_with_a_disk_keeps_reading_after_restore() {
    const TEST: &str = "mini_os_with_a_disk_keeps_reading_after_restore";
    if !kvm_available(TEST) {
        return;
    }
    let Some(kernel) = common::guests::mini_os(TEST) else {
        return;
    };
    let env = Env::start("save-mini-os-disk");
    let disk = env.dir.join("mos.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    env.create(&format!(
        "name = \"mosd\"\nkernel = \"{}\"\nmemory = 32\non_crash = \"preserve\"\ndisk = [ 'file:{},hda,w' ]\n",
        kernel.display(),
        disk.display()
    ));
    let healthy = |t: &str| {
        assert!(
            !t.contains("Page fault") && !t.contains("bogus data") && !t.contains("got error code"),
            "Mini-OS's block test failed:\n{t}"
        );
    };
    let mut before = 0;
    rxen_testkit::wait_until(
        "a progress line with reads",
        Duration::from_secs(60),
        || {
            let t = console(&env, "mosd");
            healthy(&t);
            before = mini_os_reads(&t).last().copied().unwrap_or(0);
            before > 0
        },
    );
    let image = env.dir.join("mosd.save");
    env.xm_ok(&["save", "mosd", image.to_str().unwrap()]);
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    rxen_testkit::wait_until(
        "a progress line of the restored Mini-OS",
        Duration::from_secs(60),
        || {
            let t = console(&env, "mosd");
            healthy(&t);
            mini_os_reads(&t).last().is_some_and(|&n| n > before)
        },
    );
    env.xm_ok(&["destroy", "mosd"]);
}
