//! xend's HTTP side facing hostile clients and local users (issue 13): error replies
//! are always JSON, logs carry no colour codes, the token never shows in `ps`, state
//! files are private, and half-sent requests cannot hold connections forever.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs `xend foreground` on `env`'s xenstored and state (after `env.kill_xend()`),
/// with `extra` options, `vars` in its environment and stderr into `stderr_file`.
fn spawn_xend(env: &Env, extra: &[&str], vars: &[(&str, &str)], stderr_file: &Path) -> Xend {
    let child = Command::new(bin("xend"))
        .arg("foreground")
        .args(["--port", &env.port.to_string()])
        .arg("--state-dir")
        .arg(env.dir.join("state"))
        .arg("--log-dir")
        .arg(env.dir.join("log"))
        .arg("--xenstored-socket")
        .arg(env.dir.join("xs/socket"))
        .arg("--unix-socket")
        .arg(env.unix_socket())
        .args(extra)
        .env_remove("XEND_AUTH_TOKEN")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr_file).unwrap())
        .spawn()
        .expect("xend");
    Xend(child)
}

/// A xend this test started, killed if the test fails before stopping it.
struct Xend(Child);

impl Xend {
    fn id(&self) -> u32 {
        self.0.id()
    }
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }
}

impl Drop for Xend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `request` as is on a new TCP connection and returns all of the reply.
fn raw_request(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn stop(mut child: Xend) {
    // SAFETY: signals the xend this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    wait_until("xend to stop", Duration::from_secs(15), || {
        child.try_wait().unwrap().is_some()
    });
}

/// Item 19: axum's own rejections (413 body too large, a bad path) were plain text.
#[test]
fn every_error_reply_is_the_api_error_json() {
    let env = Env::start("json-errors");
    // xend answers 413 and closes as soon as the body passes the limit, possibly while
    // the client is still sending: write what it takes, tolerate the broken pipe, then
    // read the answer (an HTTP client library turned that race into a flaky EPIPE).
    let reply = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = "x".repeat(3 << 20);
        let head = format!(
            "POST /domains HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        let _ = s.write_all(body.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"]["code"], "body_too_large", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    // A path segment that is not UTF-8 (axum's Path rejection).
    let reply = raw_request(
        env.port,
        "GET /domains/%FF HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let (s, v) = env.get("/no/such/endpoint");
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("no_route")));
    let (s, v) = env.post("/domains", "{not json");
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");
}

fn has_ansi(p: &Path) -> bool {
    std::fs::read(p)
        .unwrap_or_default()
        .windows(2)
        .any(|w| w == b"\x1b[")
}

/// Item 19: colour codes went to log files (stderr is xend-stderr.log under
/// `xend start`).
#[test]
fn logs_and_piped_stderr_have_no_colour_codes() {
    let mut env = Env::start("no-ansi");
    env.kill_xend();
    let stderr = env.dir.join("stderr.log");
    let child = spawn_xend(&env, &[], &[("RXEN_LOG", "debug")], &stderr);
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    assert_eq!(env.get("/nope").0, 404);
    stop(child);
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(text.contains("xend listening"), "{text}");
    assert!(
        !has_ansi(&stderr),
        "stderr (not a terminal) has colours: {text}"
    );
    let mut logs = 0;
    for e in std::fs::read_dir(env.dir.join("log")).unwrap() {
        let p = e.unwrap().path();
        logs += 1;
        assert!(!has_ansi(&p), "{} has colour codes", p.display());
    }
    assert!(logs >= 2, "xend.log and xend-debug.log");
}

fn write_mode(p: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn status_with_token(env: &Env, token: &str) -> u16 {
    match env
        .agent
        .get(env.url("/domains"))
        .header("Authorization", format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Item 16: the token was an argument (`ps` showed it); blank tokens were taken.
#[test]
fn the_token_comes_from_a_private_file_or_the_environment_never_argv() {
    let mut env = Env::start("token");
    env.kill_xend();
    let token = "t0ken-Secret-42";
    let file = env.dir.join("token");
    write_mode(&file, &format!("{token}\n"), 0o600);
    let stderr = env.dir.join("stderr.log");
    let child = spawn_xend(
        &env,
        &["--auth-token-file", file.to_str().unwrap()],
        &[],
        &stderr,
    );
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(token),
        "the token is on xend's command line"
    );
    assert_eq!(env.get("/domains").0, 401);
    assert_eq!(status_with_token(&env, "t0ken-Secret-43"), 401);
    assert_eq!(status_with_token(&env, token), 200);
    stop(child);

    // The environment works too.
    let child = spawn_xend(&env, &[], &[("XEND_AUTH_TOKEN", token)], &stderr);
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    assert_eq!(env.get("/domains").0, 401);
    assert_eq!(status_with_token(&env, token), 200);
    stop(child);

    // Refused at start: a world-readable file, blank tokens, the old option.
    let refused = |extra: &[&str], vars: &[(&str, &str)]| -> String {
        let mut c = spawn_xend(&env, extra, vars, &stderr);
        let mut status = None;
        wait_until("xend to refuse to start", Duration::from_secs(15), || {
            status = c.try_wait().unwrap();
            status.is_some()
        });
        assert!(!status.unwrap().success());
        std::fs::read_to_string(&stderr).unwrap()
    };
    write_mode(&file, "t0ken\n", 0o644);
    let err = refused(&["--auth-token-file", file.to_str().unwrap()], &[]);
    assert!(err.contains("accessible to every user"), "{err}");
    write_mode(&file, "   \n", 0o600);
    let err = refused(&["--auth-token-file", file.to_str().unwrap()], &[]);
    assert!(err.contains("blank"), "{err}");
    let err = refused(&[], &[("XEND_AUTH_TOKEN", " \t ")]);
    assert!(err.contains("blank"), "{err}");
    let err = refused(&["--auth-token", token], &[]);
    assert!(err.contains("--auth-token-file"), "{err}");
}

/// Item 16: xend.db, logs and the state directory were readable by every user.
#[test]
fn state_and_log_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = Env::start("umask");
    env.kill_xend();
    // Fresh directories, created by xend itself.
    let _ = std::fs::remove_dir_all(env.dir.join("state"));
    let _ = std::fs::remove_dir_all(env.dir.join("log"));
    let stderr = env.dir.join("stderr.log");
    let child = spawn_xend(&env, &[], &[], &stderr);
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    let mut seen = Vec::new();
    let mut check = |p: &Path| {
        let mode = std::fs::symlink_metadata(p).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {:o}",
            p.display(),
            mode & 0o777
        );
        seen.push(p.file_name().unwrap().to_string_lossy().into_owned());
    };
    for dir in ["state", "log"] {
        let d = env.dir.join(dir);
        check(&d);
        for e in std::fs::read_dir(&d).unwrap() {
            check(&e.unwrap().path());
        }
    }
    check(&env.unix_socket());
    assert!(seen.iter().any(|n| n == "xend.db"), "{seen:?}");
    stop(child);
}

/// Opens a connection that sends half a request and then nothing.
fn half_request(port: u16) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /domains HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// Whether the server closed `s` (a read gives EOF or an error rather than timing out).
fn closed_by_server(s: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 512];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => closed_by_server(s),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Item 18: 3000 half-sent requests stayed open forever.
#[test]
fn half_sent_requests_are_closed_and_cannot_starve_the_api() {
    let mut env = Env::start("slowloris");
    env.kill_xend();
    let stderr = env.dir.join("stderr.log");
    let child = spawn_xend(
        &env,
        &["--header-read-timeout", "1", "--max-connections", "16"],
        &[],
        &stderr,
    );
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    // More slow clients than the cap.
    let mut slow: Vec<_> = (0..48).map(|_| half_request(env.port)).collect();
    // They do not hold the API for longer than the header timeout.
    env.wait_until("the API to answer despite slow clients", || {
        env.get("/health").0 == 200
    });
    env.wait_until("every half-sent request to be closed", || {
        slow.iter_mut().all(closed_by_server)
    });
    // The Unix socket is served with the same bounds.
    let mut u = std::os::unix::net::UnixStream::connect(env.unix_socket()).unwrap();
    {
        use std::io::{Read, Write};
        u.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = Vec::new();
        let _ = u.read_to_end(&mut b);
        assert!(b.is_empty() || b.starts_with(b"HTTP/1.1 408"), "{b:?}");
    }
    assert_eq!(env.get("/health").0, 200);
    stop(child);
}

/// Shutdown still ends an open `/events` stream (SSE) and the daemon exits.
#[test]
fn shutdown_ends_event_streams() {
    use std::io::{Read, Write};
    let mut env = Env::start("sse-stop");
    env.kill_xend();
    let stderr = env.dir.join("stderr.log");
    let child = spawn_xend(&env, &[], &[], &stderr);
    env.wait_until("xend to answer", || env.get("/health").0 == 200);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 256];
    let n = s.read(&mut b).unwrap();
    assert!(b[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &b[..n]);
    stop(child);
}
