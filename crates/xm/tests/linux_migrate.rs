//! Debian's stock kernel saved, restored and migrated with its devices (issue 12):
//! Linux's suspend path with xen-blkfront and xen-netfront reconnecting after the
//! resume, live migration to a second xend on this host, and the suspend of an SMP
//! domain (`xen_vcpu_restore` taking the other vCPUs down and up again).
//!
//! Helpers (kernel, busybox, initramfs, the counter loop): `common/linux.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::linux::{
    self, boot_text, disk_modules, ext2_image, last_count, load_disk_modules, tempfile_dir,
};
use common::{kvm_available, Env};

/// One Linux domain at a time in this binary (see `linux_guest.rs`).
fn one_linux_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The page busybox's httpd serves.
const PAGE: &str = "Hello from a restored Linux on rxen\n";

/// What a device test needs: the kernel, busybox, the initramfs files (blkfront,
/// ext4, netfront, the web page), the ext2 image and its tree.
struct DeviceKit {
    kernel: PathBuf,
    busybox: PathBuf,
    files: Vec<(String, Vec<u8>)>,
    tree: PathBuf,
    img: PathBuf,
}

impl DeviceKit {
    fn get(test: &str) -> Option<DeviceKit> {
        if !kvm_available(test) {
            return None;
        }
        let kernel = linux::kernel(test)?;
        let busybox = linux::busybox(&kernel, test)?;
        let mut files = disk_modules(&kernel, test)?;
        let netfront = linux::module(&kernel, "xen-netfront.ko", test)?;
        files.push((
            "lib/xen-netfront.ko".into(),
            std::fs::read(netfront).unwrap(),
        ));
        files.push(("www/index.html".into(), PAGE.as_bytes().to_vec()));
        let tree = tempfile_dir(test);
        std::fs::write(tree.join("hello.txt"), "hello\n").unwrap();
        let img = ext2_image(test, &tree)?;
        Some(DeviceKit {
            kernel,
            busybox,
            files,
            tree,
            img,
        })
    }

    /// `xm create` of `name` in `env` with the disk and a vif on `bridge` running
    /// [`device_counter_init`] at `ip`.
    fn create(&self, env: &Env, name: &str, ip: &str, bridge: &str, vifname: Option<&str>) {
        let files: Vec<(&str, Vec<u8>)> = self
            .files
            .iter()
            .map(|(p, d)| (p.as_str(), d.clone()))
            .collect();
        let vifname = vifname.map(|n| format!(",vifname={n}")).unwrap_or_default();
        let extra = format!(
            "disk = [ 'file:{},xvda,w' ]\nvif = [ 'bridge={bridge}{vifname}' ]\n",
            self.img.display()
        );
        linux::create_in(
            env,
            &self.kernel,
            &self.busybox,
            name,
            &device_counter_init(ip),
            &files,
            &extra,
        );
    }

    /// The count the guest last wrote to its disk (`/count.txt` of the image), read
    /// with debugfs once the domain is off.
    fn count_on_disk(&self) -> Option<u64> {
        let cat = std::process::Command::new("debugfs")
            .args(["-R", "cat /count.txt"])
            .arg(&self.img)
            .output()
            .ok()?;
        String::from_utf8_lossy(&cat.stdout).trim().parse().ok()
    }

    /// The image holds the count the guest under `state` last printed (give or take
    /// the round in flight when it powered off).
    fn assert_holds_last_count(&self, state: &Path) {
        let last = last_count(&boot_text(state)).unwrap();
        let on_disk = self.count_on_disk();
        assert!(
            on_disk.is_some_and(|n| n + 1 >= last && n <= last + 1),
            "the image's /count.txt is {on_disk:?}, the guest last printed {last}"
        );
    }
}

impl Drop for DeviceKit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tree);
        let _ = std::fs::remove_file(&self.img);
    }
}

/// An `/init` that loads blkfront, ext4 and netfront, mounts xvda on `/mnt`, gives
/// eth0 `ip`, starts httpd and then counts forever: each round writes the count to
/// `/mnt/count.txt`, syncs, drops the page cache and reads the file back from the
/// disk; `RXEN-COUNT-n` is printed only when the disk gave `n` back
/// (`RXEN-DISK-BAD-n` otherwise).
fn device_counter_init(ip: &str) -> String {
    format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n{}\
         /bin/busybox mount -t ext4 /dev/xvda /mnt && echo RXEN-MOUNTED\n\
         /bin/busybox insmod /lib/xen-netfront.ko\n\
         i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done\n\
         /bin/busybox ip link set lo up\n\
         /bin/busybox ip addr add {ip}/24 dev eth0\n\
         /bin/busybox ip link set eth0 up && echo RXEN-ETH0-UP\n\
         /bin/busybox httpd -p 80 -h /www && echo RXEN-HTTPD-UP\n\
         echo {}\n\
         echo 4 > /proc/sys/vm/drop_caches\n\
         i=0\n\
         while true; do\n\
           i=$((i+1))\n\
           echo $i > /mnt/count.txt && /bin/busybox sync && echo 3 > /proc/sys/vm/drop_caches\n\
           if [ \"$(/bin/busybox cat /mnt/count.txt)\" = \"$i\" ]; then echo RXEN-COUNT-$i; else echo RXEN-DISK-BAD-$i; fi\n\
           /bin/busybox sleep 0.2\n\
         done\n",
        load_disk_modules(),
        linux::INIT_MARKER
    )
}

/// Pings `ip` from the test's namespace until it answers (60 s), then fetches the
/// page with curl.
fn assert_answers(net: &common::netns::TestNet, ip: &str, state: &Path, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match net.ping(ip, Duration::from_secs(2)) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer to ping {ip} {when}: {e}\n{}",
                linux::tail(&boot_text(state), 40)
            ),
        }
    }
    let url = format!("http://{ip}/index.html");
    let page = net.exec("curl", &["-s", "--max-time", "10", &url]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains(PAGE.trim()),
        "curl {url} {when}: {page:?}\n{}",
        linux::tail(&boot_text(state), 40)
    );
}

/// Both ends of `kind/devid` of domain `name` in `env` are Connected (4).
fn assert_connected(env: &Env, name: &str, kind: &str, devid: &str) {
    let domid = common::domid_of(env, name);
    let front = common::read_node(
        env,
        &format!("/local/domain/{domid}/device/{kind}/{devid}/state"),
    );
    let back = common::read_node(
        env,
        &format!("/local/domain/0/backend/{kind}/{domid}/{devid}/state"),
    );
    assert_eq!(
        (front.as_deref(), back.as_deref()),
        (Some("4"), Some("4")),
        "xenbus states of {kind}/{devid}"
    );
}

/// The last lines the domains under `state` printed, without the counter's.
fn guest_tail(state: &Path) -> String {
    let text = boot_text(state);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("RXEN-COUNT-"))
        .collect();
    linux::tail(&lines.join("\n"), 60)
}

/// No round of the counter read back something else than it wrote.
fn assert_no_bad_disk_round(state: &Path) {
    let text = boot_text(state);
    assert!(
        !text.contains("RXEN-DISK-BAD-"),
        "the disk gave back another count:\n{}",
        linux::tail(&text, 40)
    );
}

/// `xm save` of a Linux domain with a disk and a vif (Linux's suspend path: blkfront
/// and netfront are frozen, the domain suspends) and `xm restore`: in the new domain
/// both frontends go through their resume (`blkfront_resume`, `netfront_resume`),
/// find the restored backends waiting (InitWait), write new rings and event
/// channels and connect again; the guest's disk round trip (write, sync, drop the
/// cache, read back) goes on past where it was, the guest answers ping and curl from
/// the test's namespace again, and after `xm shutdown` the image holds the last count.
#[test]
fn linux_with_a_disk_and_a_vif_survives_save_and_restore() {
    let _serial = one_linux_at_a_time();
    let test = "linux_with_a_disk_and_a_vif_survives_save_and_restore";
    let Some(kit) = DeviceKit::get(test) else {
        return;
    };
    let Some(net) = common::netns::test_net(test) else {
        return;
    };
    let ip = net.addr(2);
    let env = Env::start("linuxdevsave");
    let name = "linuxdev";
    kit.create(&env, name, &ip, &net.bridge, Some(&net.tap_name(0)));
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the disk counter to reach 3", |t| {
        last_count(t).is_some_and(|n| n >= 3)
    });
    assert_answers(&net, &ip, &state, "before the save");
    assert_connected(&env, name, "vbd", "51712");
    assert_connected(&env, name, "vif", "0");
    for round in 1..=2 {
        let before = last_count(&boot_text(&state)).unwrap();
        let image = env.dir.join(format!("{name}-{round}.save"));
        let save = env.xm(&["save", name, image.to_str().unwrap()]);
        let text = boot_text(&state);
        assert!(
            save.status.success(),
            "xm save {round}: {}\n{}\n--- the VMM's own lines:\n{}",
            String::from_utf8_lossy(&save.stderr),
            linux::tail(&text, 40),
            linux::tail(&linux::vmm_lines(&text), 30)
        );
        let before = before.max(last_count(&text).unwrap_or(0));
        eprintln!("{test}: save {round} at count {before}");
        env.xm_ok(&["restore", image.to_str().unwrap()]);
        linux::wait_for_text(&state, "the disk counter to go on after the restore", |t| {
            last_count(t).is_some_and(|n| n >= before + 5)
        });
        eprintln!(
            "{test}: restore {round}: count {:?}",
            last_count(&boot_text(&state))
        );
        assert_no_bad_disk_round(&state);
        assert_connected(&env, name, "vbd", "51712");
        assert_connected(&env, name, "vif", "0");
        // The guest wrote it at boot only: xend carries it over, so the next save
        // asks the guest to suspend again (a transparent save would leave the guest
        // without its xenstore watches: no `xm shutdown`).
        assert_eq!(
            common::read_node(
                &env,
                &format!(
                    "/local/domain/{}/control/feature-suspend",
                    common::domid_of(&env, name)
                )
            )
            .as_deref(),
            Some("1"),
            "control/feature-suspend after restore {round}"
        );
        assert_answers(&net, &ip, &state, &format!("after restore {round}"));
        let _ = std::fs::remove_file(&image);
    }
    linux::shutdown_powers_off(&env, name);
    kit.assert_holds_last_count(&state);
}

/// An xend with a relocation server on a free port (token `token`); returns it and
/// that port.
fn relocating_xend(tag: &str, token: &Path) -> (Env, u16) {
    let port = rxen_testkit::free_port();
    let env = Env::start_with(
        tag,
        &[
            "--relocation-port",
            &port.to_string(),
            "--relocation-token-file",
            token.to_str().unwrap(),
        ],
    );
    (env, port)
}

/// A relocation token file (mode 0600) in `dir`.
fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("relocation.token");
    std::fs::write(&p, "token-linux-migrate\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Creates and destroys a small domain at `env` until its domids pass `past`: two
/// xends on one host number domains independently, and the migrated domain's default
/// TAP name (`vif<domid>.0`) must not be the one the source still holds.
fn move_domids_past(env: &Env, past: u64) {
    loop {
        let pad = env.create(&format!(
            "name = \"pad\"\nkernel = \"{}\"\nmemory = 16\nextra = \"mib=1 tick_ms=50\"\n",
            rxen_testkit::guest("memcheck").display()
        ));
        env.xm_ok(&["destroy", "pad"]);
        if pad["domid"].as_u64().unwrap() > past {
            return;
        }
    }
}

/// `xm migrate --live` of a Linux domain with a disk and a vif to a second xend on
/// this host: Linux advertises `control/feature-suspend`, so once the pre-copy rounds
/// (while it runs) are over the source asks it to suspend (as Xen does) and the
/// stop-and-copy sends the rest; at the target it resumes in a new domain (event channels, xenstore watches, blkfront and
/// netfront reconnected to the target's backends on the same disk file and a TAP of
/// its own on the bridge). First a migration the target refuses (the name is in use
/// there): the guest runs on at the source. The disk counter goes on past where it was, the guest
/// answers ping and curl from the target, the source has no domain left, and `xm
/// shutdown` at the target powers it off cleanly with the last count on the disk.
#[test]
fn linux_with_devices_migrates_live_to_a_second_xend() {
    let _serial = one_linux_at_a_time();
    let test = "linux_with_devices_migrates_live_to_a_second_xend";
    let Some(kit) = DeviceKit::get(test) else {
        return;
    };
    let Some(net) = common::netns::test_net(test) else {
        return;
    };
    let token = token_file(&kit.tree);
    let (a, _) = relocating_xend("linuxmig-a", &token);
    let (b, port_b) = relocating_xend("linuxmig-b", &token);
    let ip = net.addr(2);
    let name = "linuxmig";
    kit.create(&a, name, &ip, &net.bridge, None);
    move_domids_past(&b, common::domid_of(&a, name));
    let state_a = a.dir.join("state");
    let state_b = b.dir.join("state");
    linux::wait_for_text(&state_a, "the disk counter to reach 3", |t| {
        last_count(t).is_some_and(|n| n >= 3)
    });
    assert_answers(&net, &ip, &state_a, "before the migration");
    // A refused migration (the name is in use at the target): refused at the hello,
    // before the guest is asked to suspend; it runs on here, devices and xenstore
    // watches as they were.
    b.create(&format!(
        "name = \"{name}\"\nkernel = \"{}\"\nmemory = 16\nextra = \"mib=1 tick_ms=50\"\n",
        rxen_testkit::guest("memcheck").display()
    ));
    let refused = a.xm(&["migrate", "--live", name, &format!("127.0.0.1:{port_b}")]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("name"),
        "a migration to a target with that name: {refused:?}"
    );
    b.xm_ok(&["destroy", name]);
    let before = last_count(&boot_text(&state_a)).unwrap();
    linux::wait_for_text(
        &state_a,
        "the disk counter to go on after the refusal",
        |t| last_count(t).is_some_and(|n| n >= before + 5),
    );
    assert_no_bad_disk_round(&state_a);
    assert_answers(&net, &ip, &state_a, "after the refused migration");
    // The source's logs go with its domain: the count before asking.
    let before = last_count(&boot_text(&state_a)).unwrap();
    let migrate = a.xm(&["migrate", "--live", name, &format!("127.0.0.1:{port_b}")]);
    assert!(
        migrate.status.success(),
        "xm migrate: {}\n{}\n--- source:\n{}\n--- target:\n{}",
        String::from_utf8_lossy(&migrate.stderr),
        String::from_utf8_lossy(&migrate.stdout),
        guest_tail(&state_a),
        guest_tail(&state_b)
    );
    let figures = String::from_utf8_lossy(&migrate.stdout).into_owned();
    eprintln!("{test}: migrated at count {before}:\n{figures}");
    // The source asked the guest only after the pre-copy (its xend's log).
    let log: String = std::fs::read_dir(a.dir.join("log"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        log.contains("asking the guest to suspend for the stop-and-copy"),
        "the source xend did not ask the guest to suspend:\n{}",
        linux::tail(&log, 30)
    );
    assert_eq!(
        a.get(&format!("/domains/{name}")).0,
        404,
        "left at the source"
    );
    linux::wait_for_text(&state_b, "the disk counter to go on at the target", |t| {
        last_count(t).is_some_and(|n| n > before + 5)
    });
    assert_no_bad_disk_round(&state_b);
    assert_connected(&b, name, "vbd", "51712");
    assert_connected(&b, name, "vif", "0");
    assert_answers(&net, &ip, &state_b, "after the migration");
    linux::shutdown_powers_off(&b, name);
    kit.assert_holds_last_count(&state_b);
}

/// `vcpus = 2`, saved and restored twice through Linux's suspend path: at the resume
/// Linux's `xen_vcpu_restore` takes CPU 1 down (`VCPUOP_down`), registers each vCPU's
/// runstate area and `vcpu_info` again and brings CPU 1 back up (`VCPUOP_up`). Each
/// round of `/init`'s counter runs a process pinned to CPU 1 (busybox `taskset -c 1`)
/// and prints `RXEN-COUNT-n` only when it ran: the counter goes on past where it was,
/// so CPU 1 runs again after each restore, and `xm shutdown` powers the domain off.
#[test]
fn linux_on_two_vcpus_survives_save_and_restore() {
    let _serial = one_linux_at_a_time();
    let test = "linux_on_two_vcpus_survives_save_and_restore";
    let init = format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n\
         echo RXEN-NPROC=$(/bin/busybox nproc)\necho {}\ni=0\n\
         while true; do i=$((i+1)); /bin/busybox taskset -c 1 /bin/busybox true && echo RXEN-COUNT-$i; /bin/busybox sleep 0.2; done\n",
        linux::INIT_MARKER
    );
    let name = "linuxsmpsave";
    let Some(env) = linux::boot(test, name, &init, &[], "vcpus = 2\n") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the counter to reach 3", |t| {
        last_count(t).is_some_and(|n| n >= 3)
    });
    assert!(
        boot_text(&state).contains("RXEN-NPROC=2"),
        "{}",
        guest_tail(&state)
    );
    for round in 1..=2 {
        let before = last_count(&boot_text(&state)).unwrap();
        let image = env.dir.join(format!("{name}-{round}.save"));
        let save = env.xm(&["save", name, image.to_str().unwrap()]);
        assert!(
            save.status.success(),
            "xm save {round}: {}\n{}",
            String::from_utf8_lossy(&save.stderr),
            guest_tail(&state)
        );
        env.xm_ok(&["restore", image.to_str().unwrap()]);
        linux::wait_for_text(&state, "the counter to go on after the restore", |t| {
            last_count(t).is_some_and(|n| n >= before + 5)
        });
        eprintln!(
            "{test}: restore {round}: count {before} -> {:?}",
            last_count(&boot_text(&state))
        );
        let _ = std::fs::remove_file(&image);
    }
    linux::shutdown_powers_off(&env, name);
}
