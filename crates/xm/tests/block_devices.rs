//! Block devices driven as a Xen user would (issue 9's toolstack): disks hot-plugged
//! into running domains with `xm block-attach`, listed with `block-list`, removed with
//! `block-detach` (Xen's Closing handshake, forced after a deadline), the rule that a
//! writable disk is one domain's, `phy:` disks on a loop device and an LVM volume,
//! and PV-GRUB reading an ext2 image.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::guests::{mini_os, pv_grub, skip, Console};
use common::{domid_of, kvm_available, mini_os_cfg, read_node, rows, wait_until, Env};
use serde_json::Value;

/// Mini-OS's block test reports progress every 10 s; a line with reads done means
/// data went both ways through the ring.
fn blkfront_progress_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| l.ends_with(" write") && l.contains(" read, ") && !l.starts_with("0 read"))
        .count()
}

fn wait_for_blkfront_io(console: &Console) {
    rxen_testkit::wait_until("a blkfront progress line", Duration::from_secs(60), || {
        let t = console.text();
        t.contains("Page fault") || blkfront_progress_lines(&t) >= 1
    });
    let text = console.text();
    assert!(!text.contains("Page fault"), "Mini-OS crashed:\n{text}");
    assert!(!text.contains("bogus data"), "{text}");
    assert!(!text.contains("got error code"), "{text}");
}

fn sparse_file(path: &Path, bytes: u64) {
    std::fs::File::create(path).unwrap().set_len(bytes).unwrap();
}

/// A disk hot-plugged into a paused Mini-OS is the one its blkfront opens when it
/// runs; `block-list` shows it unconnected, then connected; while it is in use
/// writable nobody else gets it; Mini-OS never answers the backend's Closing, so
/// `block-detach` cuts it after its deadline and removes the nodes; a domain's
/// hot-plugged disks go with it.
#[test]
fn hot_plugged_disk_serves_mini_os_and_is_forced_out() {
    let test = "hot_plugged_disk_serves_mini_os_and_is_forced_out";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let env = Env::start("blk-hotplug");
    let img = env.dir.join("disk.img");
    sparse_file(&img, 16 << 20);
    let cfg = mini_os_cfg(&env, &kernel, "mosh", "");
    env.xm_ok(&["create", "-p", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "mosh");
    let disk = format!("file:{},hda,w", img.display());
    env.xm_ok(&["block-attach", "mosh", &disk]);
    let backend = format!("/local/domain/0/backend/vbd/{domid}/768");
    let frontend = format!("/local/domain/{domid}/device/vbd/768");
    assert_eq!(
        read_node(&env, &format!("{frontend}/backend")).as_deref(),
        Some(backend.as_str())
    );
    let list = rows(&env.xm_ok(&["block-list", "mosh"]));
    assert_eq!(
        list[0],
        ["Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"]
    );
    assert_eq!(
        list[1],
        ["768", "0", &domid.to_string(), "1", "-1", "-1", &backend]
    );

    // In use writable: refused for another domain (even read-only) and a second time
    // for this one.
    let other = format!(
        "name = 'other'\nkernel = '{}'\nmemory = 32\ndisk = [ 'file:{},hda,r' ]\n",
        kernel.display(),
        img.display()
    );
    let (s, v) = env.post("/domains", &serde_json::json!({ "config": other }));
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "disk_in_use", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("mosh"),
        "names the user: {v}"
    );
    let o = env.xm(&[
        "block-attach",
        "mosh",
        &format!("file:{},hdb,r", img.display()),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use by domain mosh"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The same device twice.
    let spare = env.dir.join("spare.img");
    sparse_file(&spare, 1 << 20);
    let (s, v) = env.post(
        "/domains/mosh/disks",
        &serde_json::json!({ "disk": format!("file:{},hda,r", spare.display()) }),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("device_in_use")),
        "{v}"
    );

    env.xm_ok(&["unpause", "mosh"]);
    let console = Console::attach(&env, "mosh");
    wait_for_blkfront_io(&console);
    assert!(
        console.text().contains(&format!("backend at {backend}")),
        "{}",
        console.text()
    );
    let list = rows(&env.xm_ok(&["block-list", "mosh"]));
    assert_eq!(list[1][3], "4", "connected: {list:?}");
    assert_ne!(list[1][4], "-1", "{list:?}");
    assert_ne!(list[1][5], "-1", "{list:?}");

    let started = Instant::now();
    let o = env.xm(&["block-detach", "mosh", "hda", "--timeout", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("removed by force"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read_node(&env, &backend), None);
    assert_eq!(read_node(&env, &frontend), None);
    assert_eq!(rows(&env.xm_ok(&["block-list", "mosh"])).len(), 1);
    let (_, dom) = env.get("/domains/mosh");
    assert_eq!(dom["config"]["disks"], serde_json::json!([]), "{dom}");

    // Released: the same device number and file can be attached again.
    env.xm_ok(&[
        "block-attach",
        "mosh",
        &format!("file:{},hda,r", img.display()),
    ]);
    wait_until("the re-attached backend to wait for its frontend", || {
        read_node(&env, &format!("{backend}/state")).as_deref() == Some("2")
    });
    let (s, disks) = env.get("/domains/mosh/disks");
    assert_eq!(s, 200);
    assert_eq!(disks[0]["mode"], "r", "{disks}");
    env.xm_ok(&["destroy", "mosh"]);
    wait_until("the hot-plugged disk's nodes to go with the domain", || {
        read_node(&env, &format!("/local/domain/0/backend/vbd/{domid}")).is_none()
    });
}

/// A frontend that answers the backend's Closing with Closed ends the detach at once
/// (not forced); a frontend that never connected is closed without waiting; disks
/// hot-plugged before a restart of xend are still the domain's after it; read-only
/// sharing is allowed and the key=value form with `target=` last is accepted.
#[test]
fn detach_waits_for_the_frontend_and_survives_a_xend_restart() {
    let test = "detach_waits_for_the_frontend_and_survives_a_xend_restart";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let mut env = Env::start("blk-detach");
    let img = env.dir.join("ro.img");
    sparse_file(&img, 1 << 20);
    let cfg = mini_os_cfg(&env, &kernel, "mosd", "");
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let domid = domid_of(&env, "mosd");
    let (s, d) = env.post(
        "/domains/mosd/disks",
        &serde_json::json!({ "disk": format!("file:{},xvdb,r", img.display()) }),
    );
    assert_eq!(s, 201, "{d}");
    assert_eq!(
        (d["devid"].as_u64(), d["mode"].as_str()),
        (Some(51728), Some("r"))
    );
    // Read-only twice is fine; xl's key=value parts, target last.
    env.xm_ok(&[
        "block-attach",
        "mosd",
        "vdev=xvdc",
        "access=r",
        &format!("target={}", img.display()),
    ]);
    let (s, v) = env.post(
        "/domains/mosd/disks",
        &serde_json::json!({ "disk": format!("file:{},xvdd,w", img.display()) }),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("disk_in_use")),
        "{v}"
    );
    let backend = format!("/local/domain/0/backend/vbd/{domid}/51728");
    let frontend = format!("/local/domain/{domid}/device/vbd/51728");
    wait_until("the backend to wait for its frontend", || {
        read_node(&env, &format!("{backend}/state")).as_deref() == Some("2")
    });

    env.restart_xend();
    let (s, disks) = env.get("/domains/mosd/disks");
    assert_eq!(s, 200, "{disks}");
    let vdevs: Vec<&str> = disks
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["vdev"].as_str().unwrap())
        .collect();
    assert_eq!(vdevs, ["xvdb", "xvdc"], "{disks}");

    // Play a frontend that is busy (Reconfiguring: neither unconnected nor closed),
    // and closes when the backend asks.
    let mut xs = env.xenstore();
    xs.write(0, &format!("{frontend}/state"), b"7").unwrap();
    let closer = {
        let mut xs = env.xenstore();
        let (backend, frontend) = (backend.clone(), frontend.clone());
        std::thread::spawn(move || {
            rxen_testkit::wait_until("backend Closing", Duration::from_secs(15), || {
                xs.read(0, &format!("{backend}/state")).ok().as_deref() == Some(b"5")
            });
            xs.write(0, &format!("{frontend}/state"), b"6").unwrap();
        })
    };
    let started = Instant::now();
    let out = env.xm_ok(&["--json", "block-detach", "mosd", "xvdb", "--timeout", "30"]);
    closer.join().unwrap();
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["forced"], false, "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(read_node(&env, &backend), None);
    assert_eq!(read_node(&env, &frontend), None);

    // Never connected (frontend Initialising): closed at once, by device number.
    let started = Instant::now();
    let out = env.xm_ok(&["--json", "block-detach", "mosd", "51744"]);
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (reply["vdev"].as_str(), reply["forced"].as_bool()),
        (Some("xvdc"), Some(false))
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (_, disks) = env.get("/domains/mosd/disks");
    assert_eq!(disks, serde_json::json!([]));
    // Unknown devices and bad waits are the client's mistakes.
    let (s, v) = env.delete("/domains/mosd/disks/xvdq");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("no_device")),
        "{v}"
    );
    let (s, _) = env.delete("/domains/mosd/disks/xvdb?wait=-1");
    assert_eq!(s, 400);
    env.xm_ok(&["destroy", "mosd"]);
}

/// A loop device over a file, made and removed by the test.
struct Loop {
    dev: String,
}

impl Loop {
    fn new(file: &Path) -> Result<Loop, String> {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "losetup: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(Loop {
            dev: String::from_utf8_lossy(&o.stdout).trim().to_string(),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// An LVM volume group on a loop device with one 8 MiB volume, removed on drop.
struct Lvm {
    vg: String,
    _pv: Loop,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(cmd)
        .args(args)
        // The test's own pipes are no concern of LVM's.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl Lvm {
    fn new(file: &Path) -> Result<Lvm, String> {
        let pv = Loop::new(file)?;
        let vg = format!("rxentest{}", std::process::id());
        let lvm = Lvm { vg, _pv: pv };
        run("pvcreate", &["-q", &lvm._pv.dev])?;
        run("vgcreate", &["-q", &lvm.vg, &lvm._pv.dev])?;
        run("lvcreate", &["-q", "-L", "8M", "-n", "lv", &lvm.vg])?;
        Ok(lvm)
    }

    fn lv(&self) -> String {
        format!("/dev/{}/lv", self.vg)
    }
}

impl Drop for Lvm {
    fn drop(&mut self) {
        let _ = run("vgremove", &["-qf", &self.vg]);
        let _ = run("pvremove", &["-q", &self._pv.dev]);
    }
}

fn mini_os_on(env: &Env, kernel: &Path, name: &str, disk: &str) {
    let cfg = mini_os_cfg(env, kernel, name, &format!("disk = [ '{disk}' ]\n"));
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let console = Console::attach(env, name);
    wait_for_blkfront_io(&console);
    assert!(
        console.text().contains("sectors of 512 bytes"),
        "{}",
        console.text()
    );
    let (_, disks) = env.get(&format!("/domains/{name}/disks"));
    assert_eq!(disks[0]["backend_type"], "phy", "{disks}");
    env.xm_ok(&["destroy", name]);
}

/// `phy:` disks: Mini-OS's blkfront on a loop device, then on an LVM logical volume
/// (Debian's lvm2 on a loop device). LVM needs the kernel's device-mapper: without
/// it that half is skipped loudly (failed when `RXEN_REQUIRE_LVM=1`).
#[test]
fn mini_os_on_a_loop_device_and_an_lvm_volume() {
    let test = "mini_os_on_a_loop_device_and_an_lvm_volume";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = mini_os(test) else { return };
    let env = Env::start("blk-phy");
    let backing = env.dir.join("loop.img");
    sparse_file(&backing, 16 << 20);
    let lo = match Loop::new(&backing) {
        Ok(l) => l,
        Err(e) => return skip(test, &format!("loop devices are not usable here ({e})")),
    };
    mini_os_on(&env, &kernel, "moslo", &format!("phy:{},hda,w", lo.dev));
    drop(lo);

    let pv = env.dir.join("pv.img");
    sparse_file(&pv, 32 << 20);
    let lvm = match Lvm::new(&pv) {
        Ok(l) => l,
        Err(e) => {
            let why = format!(
                "LVM volumes cannot be made here ({e}); needs lvm2 and the kernel's device-mapper"
            );
            assert!(
                std::env::var_os("RXEN_REQUIRE_LVM").is_none(),
                "{test}: {why}"
            );
            eprintln!("SKIPPED {test} (LVM half): {why}");
            return;
        }
    };
    mini_os_on(&env, &kernel, "moslv", &format!("phy:{},hda,w", lvm.lv()));
}

/// Issue 9's PV-GRUB client: an ext2 image made by `mke2fs -d` from a directory
/// holding `hello.txt`, as xvda: `ls (xen/xvda)` lists it and `cat` prints it.
#[test]
fn pv_grub_reads_an_ext2_disk() {
    let test = "pv_grub_reads_an_ext2_disk";
    if !kvm_available(test) {
        return;
    }
    let Some(grub) = pv_grub(test) else { return };
    let env = Env::start("pv-grub-ext2");
    let tree = env.dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello from an rxen disk\n").unwrap();
    let img = env.dir.join("ext2.img");
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("4M")
        .output();
    match made {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("mke2fs: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            return skip(
                test,
                &format!("mke2fs is not usable ({e}); apt-get install e2fsprogs"),
            )
        }
    }
    let cfg = env.dir.join("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"grubdisk\"\nkernel = \"{}\"\nmemory = 64\ndisk = [ 'file:{},xvda,r' ]\n",
            grub.display(),
            img.display()
        ),
    )
    .unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let mut console = Console::attach(&env, "grubdisk");
    wait_until("PV-GRUB's grub> prompt", || {
        console.text().contains("grub> ")
    });
    let mark = console.len();
    console.type_line("ls");
    wait_until("GRUB's device list", || {
        console.text_from(mark).contains("(xen/xvda)")
    });
    let mark = console.len();
    console.type_line("ls (xen/xvda)");
    wait_until("GRUB's view of (xen/xvda)", || {
        console.text_from(mark).contains("Filesystem type ext")
    });
    let mark = console.len();
    console.type_line("ls (xen/xvda)/");
    wait_until("the listing of (xen/xvda)", || {
        console.text_from(mark).contains("hello.txt")
    });
    let mark = console.len();
    console.type_line("cat (xen/xvda)/hello.txt");
    wait_until("the file's text", || {
        console.text_from(mark).contains("hello from an rxen disk")
    });
    console.type_line("halt");
    wait_until("the domain to power off and go away", || {
        env.get("/domains/grubdisk").0 == 404
    });
}
