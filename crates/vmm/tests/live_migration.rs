//! Live migration inside one process (`rxen_vmm::snapshot::migrate`): the test plays
//! the relocation server on a loopback socket (hello, `ready`, the image restored
//! straight from the connection, `running`). The `memcheck` guest rewrites pages while
//! the pre-copy runs (`dirty_kib=`), so a page the dirty log missed fails its check at
//! the target; a refusal or a target that dies leaves the source running, and device
//! backends quiesced at the stop-and-copy are resumed when it does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use rxen_vmm::console::CaptureSink;
use rxen_vmm::snapshot::{migrate, restore, MigrateError, RestoreOptions};
use rxen_vmm::{Domain, DomainConfig};
use rxen_vmm_api::relocation::{Answer, Hello};

const WAIT: Duration = Duration::from_secs(30);

fn wait_tick(s: &CaptureSink, at_least: u64) -> u64 {
    wait_until(&format!("tick {at_least}"), WAIT, || {
        memcheck_last_tick(s).filter(|&t| t >= at_least)
    })
}

fn memcheck(cmdline: &str) -> (Domain, CaptureSink) {
    let image = std::fs::read(guest("memcheck")).expect("memcheck guest");
    let sink = CaptureSink::default();
    let cfg = DomainConfig {
        name: "mc".into(),
        memory_mib: 64,
        cmdline: cmdline.into(),
        ..Default::default()
    };
    let d = Domain::create(cfg, &image, Box::new(sink.clone())).expect("create");
    (d, sink)
}

fn answer(s: &mut TcpStream, a: &Answer) {
    let mut line = serde_json::to_string(a).unwrap();
    line.push('\n');
    s.write_all(line.as_bytes()).unwrap();
}

/// Keeps a copy of every byte read through it.
struct Tee<'a, R> {
    inner: R,
    copy: &'a mut Vec<u8>,
}

impl<R: std::io::Read> std::io::Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// Runs Xen's checker on `image`: `Some(output)` if it refused it, `None` if it
/// accepted it or is not installed (then it says so).
fn xen_refuses(image: &[u8]) -> Option<String> {
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    if !std::path::Path::new(tool).exists() {
        eprintln!(
            "SKIPPED verify-stream-v2 check: {tool} is missing (apt-get install xen-utils-4.17)"
        );
        return None;
    }
    let path = std::env::temp_dir().join(format!("rxen-live-{}.img", std::process::id()));
    std::fs::write(&path, image).unwrap();
    let out = std::process::Command::new("python3")
        .arg(tool)
        .args(["-f", "xl", "-i"])
        .arg(&path)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .output()
        .expect("running verify-stream-v2");
    let _ = std::fs::remove_file(&path);
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

type Target = std::thread::JoinHandle<Option<(Domain, CaptureSink, Vec<u8>)>>;

/// A one-connection relocation server: checks the token, restores the image from
/// the connection and answers `running`. Returns the restored domain, its console
/// and the image's bytes.
fn target(listener: TcpListener, token: &'static str) -> Target {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let hello: Hello = serde_json::from_str(&line).unwrap();
        if hello.token != token {
            let refused = Answer::Refused {
                error: "bad_token".into(),
                message: "wrong token".into(),
            };
            answer(&mut s, &refused);
            return None;
        }
        answer(&mut s, &Answer::Ready);
        let sink = CaptureSink::default();
        let opts = RestoreOptions {
            name: "mc".into(),
            domid: 9,
            console: Default::default(),
            start_paused: false,
        };
        let mut image = Vec::new();
        let tee = Tee {
            inner: &mut r,
            copy: &mut image,
        };
        let restored = restore(tee, opts, Box::new(sink.clone())).expect("restore");
        assert_eq!(restored.toolstack_config, hello.config.as_bytes());
        assert!(
            restored.devices.is_empty(),
            "memcheck has no devices: no device rings in the stream"
        );
        let d = restored.domain;
        answer(&mut s, &Answer::Running { domid: 9 });
        Some((d, sink, image))
    })
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

#[test]
fn dirtying_memcheck_migrates_live_and_keeps_its_memory() {
    if !kvm_available("dirtying_memcheck_migrates_live_and_keeps_its_memory") {
        return;
    }
    // 16 MiB checked, 512 KiB rewritten every 5 ms: pages change under every round.
    let (src, src_sink) = memcheck("mib=16 tick_ms=5 dirty_kib=512");
    wait_tick(&src_sink, 3);
    let (l, addr) = listener();
    let t = target(l, "secret");
    let figures = migrate(src.shared(), &addr, "secret", "{\"x\":1}", true).expect("migrate");
    let at = memcheck_last_tick(&src_sink).unwrap();
    let (dst, dst_sink, image) = t.join().unwrap().expect("target ran");
    assert_eq!(figures.target_domid, 9);
    // Pages sent more than once are still a stream Xen's own checker accepts.
    if let Some(why) = xen_refuses(&image) {
        panic!("verify-stream-v2 refused a live migration stream:\n{why}");
    }
    assert!(
        figures.pages_per_round.len() >= 2,
        "pre-copy then stop-and-copy: {figures:?}"
    );
    assert!(
        figures.pages_per_round[1..].iter().any(|&p| p > 0),
        "{figures:?}"
    );
    assert_eq!(
        figures.pages_sent,
        figures.pages_per_round.iter().sum::<u64>()
    );
    assert!(figures.downtime_ms > 0.0 && figures.downtime_ms < figures.total_ms);
    // The source stays paused (the toolstack destroys it); the target counts on,
    // checking every page at every tick.
    assert!(src.shared().vcpus.iter().all(|v| v.lock().paused));
    let resumed = wait_tick(&dst_sink, at + 5);
    assert!(resumed > at);
    let first = dst_sink
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("memcheck: tick="))
        .and_then(|l| l.split(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(
        first > at && first <= at + 2,
        "paused at {at}, resumed at {first}"
    );
    src.destroy();
    src.wait();
    dst.destroy();
    dst.wait();
}

#[test]
fn migration_without_live_sends_one_paused_round() {
    if !kvm_available("migration_without_live_sends_one_paused_round") {
        return;
    }
    let (src, src_sink) = memcheck("mib=4 tick_ms=10");
    wait_tick(&src_sink, 2);
    let (l, addr) = listener();
    let t = target(l, "secret");
    let figures = migrate(src.shared(), &addr, "secret", "{}", false).expect("migrate");
    let (dst, dst_sink, _) = t.join().unwrap().expect("target ran");
    assert_eq!(figures.pages_per_round.len(), 1, "{figures:?}");
    wait_tick(&dst_sink, memcheck_last_tick(&src_sink).unwrap() + 2);
    src.destroy();
    src.wait();
    dst.destroy();
    dst.wait();
}

#[test]
fn refused_or_broken_migration_leaves_the_source_running() {
    if !kvm_available("refused_or_broken_migration_leaves_the_source_running") {
        return;
    }
    let (src, sink) = memcheck("mib=4 tick_ms=10 dirty_kib=64");
    wait_tick(&sink, 2);
    // A wrong token: refused before any page.
    let (l, addr) = listener();
    let t = target(l, "other");
    let err = migrate(src.shared(), &addr, "secret", "{}", true).unwrap_err();
    assert!(
        matches!(&err, MigrateError::Refused { error, .. } if error == "bad_token"),
        "{err}"
    );
    assert!(t.join().unwrap().is_none());
    let after = memcheck_last_tick(&sink).unwrap();
    wait_tick(&sink, after + 3);
    // A target that takes the image and hangs up without an answer.
    let (l, addr) = listener();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        answer(&mut s, &Answer::Ready);
        let mut sink = std::io::sink();
        // Reads until the sender stops writing and waits for the answer, then closes.
        let mut buf = [0u8; 65536];
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).unwrap();
        }
    });
    let err = migrate(src.shared(), &addr, "secret", "{}", true).unwrap_err();
    // Closed while the answer is awaited (Protocol) or, on a loaded host, while the
    // image is still being written (Send: a broken pipe): either way the source runs.
    assert!(
        matches!(err, MigrateError::Protocol(_) | MigrateError::Send(_)),
        "{err}"
    );
    t.join().unwrap();
    // Nobody listening.
    let (l, addr) = listener();
    drop(l);
    let err = migrate(src.shared(), &addr, "secret", "{}", true).unwrap_err();
    assert!(matches!(err, MigrateError::Connect { .. }), "{err}");
    assert!(src.shared().vcpus.iter().all(|v| !v.lock().paused));
    let after = memcheck_last_tick(&sink).unwrap();
    wait_tick(&sink, after + 3);
    src.destroy();
    src.wait();
}

/// Device backends that record what the snapshot code asked of them.
#[derive(Default)]
struct RecordingBackends {
    calls: std::sync::Mutex<Vec<&'static str>>,
}

impl rxen_vmm::snapshot::devices::QuiesceBackends for RecordingBackends {
    fn quiesce(&self) -> Result<rxen_vmm::snapshot::DeviceStates, String> {
        self.calls.lock().unwrap().push("quiesce");
        Ok(Default::default())
    }

    fn resume(&self, _saved: rxen_vmm::snapshot::DeviceStates) {
        self.calls.lock().unwrap().push("resume");
    }
}

/// The stop-and-copy quiesces the device backends once the domain is paused; a
/// target that takes the whole image and then refuses to run it has them resumed
/// before the domain runs on here. A migration that succeeds leaves them quiesced.
#[test]
fn the_stop_and_copy_quiesces_backends_and_a_refusal_resumes_them() {
    if !kvm_available("the_stop_and_copy_quiesces_backends_and_a_refusal_resumes_them") {
        return;
    }
    let (src, sink) = memcheck("mib=4 tick_ms=10 dirty_kib=64");
    wait_tick(&sink, 2);
    let (l, addr) = listener();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        answer(&mut s, &Answer::Ready);
        let opts = RestoreOptions {
            name: "mc".into(),
            domid: 9,
            console: Default::default(),
            start_paused: true,
        };
        let restored = restore(&mut r, opts, Box::new(CaptureSink::default())).expect("restore");
        restored.domain.destroy();
        restored.domain.wait();
        let refused = Answer::Refused {
            error: "create_failed".into(),
            message: "the test's target refuses".into(),
        };
        answer(&mut s, &refused);
    });
    let backends = RecordingBackends::default();
    let err = rxen_vmm::snapshot::migrate_with_progress(
        src.shared(),
        &addr,
        "secret",
        "{}",
        true,
        &backends,
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(err, MigrateError::Refused { .. }), "{err}");
    t.join().unwrap();
    assert_eq!(*backends.calls.lock().unwrap(), ["quiesce", "resume"]);
    assert!(src.shared().vcpus.iter().all(|v| !v.lock().paused));
    let after = memcheck_last_tick(&sink).unwrap();
    wait_tick(&sink, after + 3);
    // Accepted: quiesced, not resumed (the toolstack destroys the domain).
    let (l, addr) = listener();
    let t = target(l, "secret");
    let backends = RecordingBackends::default();
    rxen_vmm::snapshot::migrate_with_progress(
        src.shared(),
        &addr,
        "secret",
        "{}",
        true,
        &backends,
        &mut |_, _, _| {},
    )
    .expect("migrate");
    assert_eq!(*backends.calls.lock().unwrap(), ["quiesce"]);
    let (dst, dst_sink, _) = t.join().unwrap().unwrap();
    wait_tick(&dst_sink, after + 3);
    src.destroy();
    src.wait();
    dst.destroy();
    dst.wait();
}
