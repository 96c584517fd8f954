//! xenstored's pid file is held with a lock for the daemon's life: a second daemon
//! with the same pid file refuses, and a file left by a dead process or a zombie
//! never blocks a start.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    wait_until(what, Duration::from_secs(10), cond)
}

fn pid_in(path: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn second_daemon_with_the_same_pid_file_refuses() {
    let dir = temp_dir("pidlock");
    let pid_file = dir.join("xenstored.pid");
    let pf = pid_file.to_str().unwrap().to_string();
    let mut first = Daemon::start_in(dir.clone(), &["--pid-file", &pf]);
    let first_pid = first.child.as_ref().unwrap().id();
    wait_for("the pid file", || pid_in(&pid_file) == Some(first_pid));
    // Another socket, so only the pid file can stop it.
    let mut second = Command::new(env!("CARGO_BIN_EXE_xenstored"))
        .args(["--socket", dir.join("other").to_str().unwrap()])
        .args(["--pid-file", &pf])
        .stderr(Stdio::piped())
        .spawn()
        .expect("second xenstored");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = second.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second xenstored started on a locked pid file");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr text");
    assert!(!status.success(), "second daemon must refuse: {err}");
    assert!(
        err.contains(&format!("pid {first_pid}")),
        "the error names the running daemon: {err}"
    );
    assert!(first.alive());
    assert_eq!(pid_in(&pid_file), Some(first_pid), "pid file untouched");
    assert_eq!(first.stop(), Some(0));
    assert!(!pid_file.exists(), "removed at shutdown");
}

#[test]
fn pid_file_of_a_zombie_does_not_block() {
    let dir = temp_dir("pidzombie");
    let pid_file = dir.join("xenstored.pid");
    // A child that exits at once and is not reaped: a zombie, which kill(pid, 0)
    // still reports as alive.
    let mut zombie = Command::new("true").spawn().expect("spawn true");
    let zpid = zombie.id();
    wait_for("the child to become a zombie", || {
        std::fs::read_to_string(format!("/proc/{zpid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    });
    // SAFETY: signal 0 only checks that the pid exists; it sends nothing.
    let probe = unsafe { libc::kill(zpid as i32, 0) };
    assert_eq!(probe, 0, "zombie looks alive");
    std::fs::write(&pid_file, format!("{zpid}\n")).unwrap();
    let pf = pid_file.to_str().unwrap().to_string();
    let d = Daemon::start_in(dir, &["--pid-file", &pf]);
    let pid = d.child.as_ref().unwrap().id();
    wait_for("the pid file", || pid_in(&pid_file) == Some(pid));
    let _ = zombie.wait();
}
