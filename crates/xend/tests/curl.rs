//! The API scenario driven with curl, as an operator would.
// A test fails by panicking: unwrap and expect are its assertions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::process::Command;

fn curl(env: &Env, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    let _ = env;
    (body.to_string(), code.to_string())
}

#[test]
fn curl_scenario() {
    if !kvm_available("curl_scenario") {
        return;
    }
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED curl_scenario: curl is not installed");
        return;
    }
    let env = Env::start("curl");
    let u = |p: &str| env.url(p);
    let (body, code) = curl(
        &env,
        &[
            "-XPOST",
            &u("/domains"),
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"config":"name = \"c1\"\nmemory = 32\n"}"#,
        ],
    );
    assert_eq!(code, "201", "{body}");
    let (body, code) = curl(&env, &[&u("/domains")]);
    assert_eq!(code, "200");
    assert!(body.contains("\"name\":\"c1\""), "{body}");
    assert_eq!(curl(&env, &["-XPOST", &u("/domains/c1/pause")]).1, "200");
    assert_eq!(curl(&env, &["-XPOST", &u("/domains/c1/pause")]).1, "409");
    assert_eq!(curl(&env, &["-XPOST", &u("/domains/c1/unpause")]).1, "200");
    let (body, code) = curl(&env, &["-XPOST", &u("/domains/c1/shutdown?wait=10")]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(curl(&env, &[&u("/domains/c1")]).1, "404");
    let (body, code) = curl(&env, &["-XPOST", &u("/domains"), "-d", "{"]);
    assert_eq!(code, "400");
    assert!(body.contains("\"code\":\"bad_request\""), "{body}");
    let (body, code) = curl(&env, &[&u("/metrics")]);
    assert_eq!(code, "200");
    assert!(body.contains("xend_domains{state=\"running\"} 0"), "{body}");
}
