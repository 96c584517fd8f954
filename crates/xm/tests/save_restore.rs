//! Issue 11, first milestone: `xm save` / `xm save -c` / `xm restore` of a running SDK
//! guest under a real xend. The `memcheck` guest fills memory with a pattern and
//! counts ticks, checking its memory on each: after every restore it must go on
//! counting from where it was saved and never print FAILED. Xen's own checker
//! (`verify-stream-v2`) must accept the images, and broken images must be refused
//! with nothing created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{kvm_available, Env};
use serde_json::Value;

const NAME: &str = "mc";

fn console(env: &Env, name: &str) -> String {
    match env.get(&format!("/domains/{name}/console")) {
        (200, Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The tick numbers of the complete `memcheck: tick=N sum=.. ok` lines of `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("memcheck: tick=") && l.ends_with(" ok"))
        .filter_map(|l| l["memcheck: tick=".len()..].split(' ').next()?.parse().ok())
        .collect()
}

fn wait_for_tick(env: &Env, at_least: u64) -> String {
    rxen_testkit::wait_until(
        &format!("memcheck tick >= {at_least}"),
        Duration::from_secs(60),
        || {
            let t = console(env, NAME);
            assert!(!t.contains("FAILED"), "memcheck failed:\n{t}");
            ticks(&t).last().is_some_and(|&n| n >= at_least)
        },
    );
    console(env, NAME)
}

fn create_memcheck(env: &Env) -> Value {
    let kernel = rxen_testkit::guest("memcheck");
    env.create(&format!(
        "name = \"{NAME}\"\nkernel = \"{}\"\nmemory = 32\nextra = \"mib=8 tick_ms=20\"\non_crash = \"preserve\"\n",
        kernel.display()
    ))
}

/// Runs Xen's checker on `image`: `Some(output)` if it refused it, `None` if it
/// accepted it or is not installed (then it says so, loudly).
fn xen_refuses(image: &Path) -> Option<String> {
    let tool = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    if !Path::new(tool).exists() {
        eprintln!(
            "SKIPPED verify-stream-v2 check: {tool} is missing (apt-get install xen-utils-4.17)"
        );
        return None;
    }
    let out = std::process::Command::new("python3")
        .arg(tool)
        .args(["-f", "xl", "-i"])
        .arg(image)
        .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
        .output()
        .expect("running verify-stream-v2");
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn domid_of(env: &Env) -> u64 {
    let (s, v) = env.get(&format!("/domains/{NAME}"));
    assert_eq!(s, 200, "{v}");
    v["domid"].as_u64().expect("domid")
}

#[test]
fn save_and_restore_three_times_keeps_memory_and_counter() {
    if !kvm_available("save_and_restore_three_times_keeps_memory_and_counter") {
        return;
    }
    let env = Env::start("save-restore");
    let created = create_memcheck(&env);
    let uuid = created["uuid"].as_str().unwrap().to_string();
    let mut seen = 5;
    let mut domids = vec![domid_of(&env)];
    for round in 0..3 {
        let before = wait_for_tick(&env, seen);
        let image = env.dir.join(format!("mc-{round}.save"));
        let out = env.xm_ok(&["save", NAME, image.to_str().unwrap()]);
        assert!(out.contains("Saved domain mc"), "{out}");
        // `xm save` without -c: the domain is gone.
        assert_eq!(env.get(&format!("/domains/{NAME}")).0, 404);
        if let Some(why) = xen_refuses(&image) {
            panic!("verify-stream-v2 refused our image:\n{why}");
        }
        // The console log of the saved domain is gone with it; what it showed last
        // is in `before` (taken just before the save, so at most a tick behind).
        let last_before = *ticks(&before).last().unwrap();
        let out = env.xm_ok(&["restore", image.to_str().unwrap()]);
        assert!(out.contains("Started domain mc"), "{out}");
        let (_, info) = env.get(&format!("/domains/{NAME}"));
        assert_eq!(info["uuid"].as_str(), Some(uuid.as_str()), "{info}");
        let domid = domid_of(&env);
        assert!(
            !domids.contains(&domid),
            "restore reused a domid: {domids:?} {domid}"
        );
        domids.push(domid);
        // xenstore knows the new domain under its name.
        let mut xs = env.xenstore();
        let name = xs
            .read(0, &format!("/local/domain/{domid}/name"))
            .expect("xenstore name of the restored domain");
        assert_eq!(name, NAME.as_bytes());
        let after = wait_for_tick(&env, last_before + 3);
        let resumed = ticks(&after);
        let first = resumed[0];
        assert!(
            first > last_before && first <= last_before + 3,
            "round {round}: counted {last_before} before the save, resumed at {first}:\n{after}"
        );
        assert!(
            resumed.windows(2).all(|w| w[1] == w[0] + 1),
            "round {round}: the counter jumped: {resumed:?}"
        );
        seen = *resumed.last().unwrap() + 3;
    }
    env.xm_ok(&["destroy", NAME]);
}

#[test]
fn save_checkpoint_keeps_running_and_bad_images_are_refused() {
    if !kvm_available("save_checkpoint_keeps_running_and_bad_images_are_refused") {
        return;
    }
    let env = Env::start("save-checkpoint");
    create_memcheck(&env);
    let domid = domid_of(&env);
    wait_for_tick(&env, 5);
    let image = env.dir.join("mc.save");
    let out = env.xm_ok(&["save", "-c", NAME, image.to_str().unwrap()]);
    assert!(out.contains("keeps running"), "{out}");
    // Still the same domain, still counting.
    assert_eq!(domid_of(&env), domid);
    let at_save = *ticks(&console(&env, NAME)).last().unwrap();
    wait_for_tick(&env, at_save + 5);
    // Its name is taken: a restore now is refused, and nothing is created.
    let o = env.xm(&["restore", image.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("exists"), "{err}");

    // Broken images: garbage, cut short, one byte changed in the page data, a
    // directory. Each is refused with a clear error and creates nothing.
    let good = std::fs::read(&image).unwrap();
    let garbage = env.dir.join("garbage.save");
    std::fs::write(&garbage, b"this is not a saved domain\n").unwrap();
    let truncated = env.dir.join("truncated.save");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let corrupt = env.dir.join("corrupt.save");
    let mut bad = good.clone();
    // The libxc image header's marker (after the xl header, its config and the
    // libxl header and LIBXC_CONTEXT record).
    let xl_len = 48 + u32::from_le_bytes(good[44..48].try_into().unwrap()) as usize;
    bad[xl_len + 16 + 8] ^= 0xff;
    std::fs::write(&corrupt, &bad).unwrap();
    env.xm_ok(&["destroy", NAME]);
    for (file, why) in [
        (&garbage, "not an xl save image"),
        (&truncated, "ends early"),
        (&corrupt, "libxc image header"),
        (&env.dir, "not a regular file"),
    ] {
        let (status, v) = env.post("/restore", &serde_json::json!({"path": file}));
        assert_eq!(status, 400, "{}: {v}", file.display());
        assert_eq!(v["error"]["code"], "bad_image", "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{}: {msg}", file.display());
        let o = env.xm(&["restore", file.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not a restorable image"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (_, list) = env.get("/domains");
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(1),
            "only Domain-0: {list}"
        );
    }

    // The checkpoint restores to the point of the save: counting resumes from there.
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    let after = wait_for_tick(&env, at_save + 2);
    let first = ticks(&after)[0];
    assert!(
        first <= at_save + 2,
        "resumed at {first}, the checkpoint was taken at {at_save}:\n{after}"
    );
    env.xm_ok(&["destroy", NAME]);
}

/// An unmodified Xen PV kernel (Mini-OS, which knows nothing of rxen) is saved
/// transparently and goes on printing its clock lines after the restore.
#[test]
fn mini_os_is_saved_and_restored_transparently() {
    if !kvm_available("mini_os_is_saved_and_restored_transparently") {
        return;
    }
    let Some(kernel) = common::guests::mini_os("mini_os_is_saved_and_restored_transparently")
    else {
        return;
    };
    let env = Env::start("save-mini-os");
    env.create(&format!(
        "name = \"mos\"\nkernel = \"{}\"\nmemory = 32\n",
        kernel.display()
    ));
    common::wait_until("Mini-OS's first clock line", || {
        console(&env, "mos").contains("T(s=")
    });
    let image = env.dir.join("mos.save");
    env.xm_ok(&["save", "mos", image.to_str().unwrap()]);
    if let Some(why) = xen_refuses(&image) {
        panic!("verify-stream-v2 refused Mini-OS's image:\n{why}");
    }
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    // The restored domain's console log starts empty: new clock lines prove it runs.
    common::wait_until("a clock line of the restored Mini-OS", || {
        console(&env, "mos").matches("T(s=").count() >= 2
    });
    env.xm_ok(&["destroy", "mos"]);
}
