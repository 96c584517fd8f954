//! Debian's stock kernel (`linux-image-amd64`'s `vmlinuz`, a bzImage) as a Xen PV
//! guest under xend, created as xl would (`kernel = "/boot/vmlinuz-..."`), and how far
//! its boot gets (issue 12, first milestone; docs/linux-guest.md says where it stops).
//!
//! Where the kernel, its modules and busybox come from: `common/linux.rs`. Each test
//! writes its own initramfs (newc cpio: busybox, `/bin/sh`, `/dev/console`, an `/init`
//! script).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::linux::{
    self, assert_powered_off, boot, boot_text, counter_init, disk_modules, ext2_image, last_count,
    load_disk_modules, shell_init, tempfile_dir, DISK_FILE, INIT_MARKER,
};
use common::{kvm_available, Env};

/// Boot messages in the order Debian's 6.1 kernel prints them; the test reports the
/// last one seen.
const MILESTONES: &[&str] = &[
    // Early printk through HYPERVISOR_console_io (rxen's hypervisor console).
    "Linux version 6.1",
    "Hypervisor detected: Xen PV",
    "Booting kernel on Xen",
    "Memory: ",
    "xen:events: Using 2-level ABI",
    // From here the console is hvc0 (the console ring).
    "printk: console [hvc0] enabled",
    "Freeing SMP alternatives memory",
    "Grant table initialized",
    "xen:balloon: Initialising balloon driver",
    "clocksource: Switched to clocksource xen",
    "Unpacking initramfs",
    "Freeing unused kernel image",
    "Run /init as init process",
    // Printed by /init in guest user mode.
    INIT_MARKER,
    // busybox's `poweroff -f` (a fork, an exec, the reboot system call): "reboot:
    // System halted" or "reboot: Power down", then SCHEDOP_shutdown.
    "reboot: ",
];

/// The milestone the boot must reach: `/init` ran in guest user mode, printed its
/// marker and powered the domain off through busybox (fork, exec, `reboot`).
const EXPECTED: &str = "reboot: ";

fn furthest(text: &str) -> Option<usize> {
    MILESTONES.iter().rposition(|m| text.contains(m))
}

/// Debian's kernel boots as a PV domain created by `xm create` with `kernel =` the
/// bzImage and `ramdisk =` the test's initramfs: its early printk appears on the
/// hypervisor console, `/init` runs in guest user mode, prints [`INIT_MARKER`] on hvc0
/// and powers off ([`EXPECTED`]). Waits until the boot stops making progress (no new milestone for
/// 60 s), the domain ends, or the last milestone is reached.
/// One Linux boot at a time in this binary: six kernels booting at once on a 2-core
/// CI machine made a guest's own timeouts (and xend's 60 s shutdown wait) the limit,
/// not rxen; each test takes this first.
fn one_linux_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn debian_kernel_boots_as_a_pv_guest() {
    let _serial = one_linux_at_a_time();
    let test = "debian_kernel_boots_as_a_pv_guest";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::kernel(test) else {
        return;
    };
    let Some(busybox) = linux::busybox(&kernel, test) else {
        return;
    };
    let env = Env::start("linux");
    let ramdisk = env.dir.join("initramfs.cpio");
    let init = format!("#!/bin/sh\necho {INIT_MARKER}\n/bin/busybox poweroff -f\n");
    std::fs::write(&ramdisk, linux::initramfs(&busybox, &init, &[])).unwrap();
    let cfg = env.dir.join("linux.cfg");
    std::fs::write(&cfg, linux::config("linux", &kernel, &ramdisk, "")).unwrap();
    let started = Instant::now();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let state = env.dir.join("state");
    let deadline = Duration::from_secs(600);
    let stall = Duration::from_secs(60);
    let mut best = None;
    let mut last_progress = Instant::now();
    loop {
        let text = boot_text(&state);
        let now = furthest(&text);
        if now > best {
            if let Some(i) = now {
                eprintln!("{test}: {:?} after {:?}", MILESTONES[i], started.elapsed());
            }
            best = now;
            last_progress = Instant::now();
        }
        let ended = text.contains("Kernel panic") || text.contains("triple-faulted");
        if best == Some(MILESTONES.len() - 1)
            || ended
            || last_progress.elapsed() > stall
            || started.elapsed() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = boot_text(&state);
    let tail: String = text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let reached = best.map(|i| MILESTONES[i]);
    // How the domain ended, if it did: the VMM's own lines (not the guest's).
    let mut vmm_lines = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(state.join("domains")) {
        for d in dirs.filter_map(|e| e.ok()) {
            if let Ok(b) = std::fs::read(d.path().join("vmm.log")) {
                vmm_lines.extend(
                    String::from_utf8_lossy(&b)
                        .lines()
                        .filter(|l| !l.contains("(d"))
                        .map(str::to_owned),
                );
            }
        }
    }
    eprintln!(
        "{test}: VMM log tail:\n{}",
        vmm_lines[vmm_lines.len().saturating_sub(8)..].join("\n")
    );
    eprintln!(
        "{test}: furthest milestone {reached:?} in {:?}; last lines:\n{tail}",
        started.elapsed()
    );
    let expected = MILESTONES.iter().position(|m| *m == EXPECTED).unwrap();
    assert!(
        best >= Some(expected),
        "the boot stopped before {EXPECTED:?} (furthest: {reached:?}):\n{tail}"
    );
    assert!(
        text.contains("Linux version 6."),
        "no early printk:\n{tail}"
    );
    assert!(
        text.contains(INIT_MARKER),
        "/init did not print its marker:\n{tail}"
    );
    // PIT channel 2 (ports 0x42/0x43/0x61, `rxen_vmm::pit`): Linux's
    // `quick_pit_calibrate` sees the counter run and ends within milliseconds of
    // guest time. It still gives up ("Fast TSC calibration failed": each emulated
    // port read costs tens of µs, above its 500 ppm error bound), and Linux takes
    // `xen_tsc_khz`; with ports reading all ones it spun 50 000 iterations × 2 reads,
    // ~3 s, before saying so.
    let calibration = text
        .lines()
        .find(|l| l.contains("tsc: Fast TSC calibration"))
        .unwrap_or_else(|| panic!("no TSC calibration message:\n{tail}"));
    let at =
        printk_seconds(calibration).unwrap_or_else(|| panic!("no printk time in {calibration:?}"));
    assert!(
        at < 1.0,
        "Linux's PIT calibration ended only at {at} s: {calibration}"
    );
}

/// The printk timestamp (`[    0.000623] tsc: ...`) of a kernel message line, in
/// seconds (the log's own prefix may hold other brackets: the last `[` before `] tsc:`).
fn printk_seconds(line: &str) -> Option<f64> {
    let end = line.find("] tsc: ")?;
    let open = line[..end].rfind('[')?;
    line[open + 1..end].trim().parse().ok()
}

/// `xm shutdown` writes `poweroff` to the domain's `control/shutdown`: Linux's xenbus
/// watch on it fires, Linux runs `/sbin/poweroff` (busybox `poweroff -f`), powers
/// down (`reboot: `) and the domain ends with reason poweroff.
#[test]
fn xm_shutdown_powers_linux_off_through_control_shutdown() {
    let _serial = one_linux_at_a_time();
    let test = "xm_shutdown_powers_linux_off_through_control_shutdown";
    let Some(env) = boot(test, "linuxdown", &shell_init(""), &[], "") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "/init's marker", |t| t.contains(INIT_MARKER));
    // Linux's xenbus watches control/shutdown from its xenbus probe on; /init runs
    // after it.
    let down = env.xm(&["shutdown", "-w", "--timeout", "180", "linuxdown"]);
    let text = boot_text(&state);
    assert!(
        down.status.success(),
        "xm shutdown: {}\n{}",
        String::from_utf8_lossy(&down.stderr),
        linux::tail(&text, 40)
    );
    assert!(
        text.contains("reboot: "),
        "Linux did not power down:\n{}",
        linux::tail(&text, 40)
    );
    assert_powered_off(&env, "linuxdown");
}

/// `xm console` gives the shell `/init` leaves on hvc0: a command typed through it runs
/// and its output comes back.
#[test]
fn xm_console_gives_a_shell_on_hvc0() {
    let _serial = one_linux_at_a_time();
    let test = "xm_console_gives_a_shell_on_hvc0";
    // rxen-mkinitramfs's /init without root=: a shell (setsid cttyhack: hvc0 as its
    // controlling terminal).
    let init = rxen_initramfs::boot_init(&[]);
    let Some(env) = boot(test, "linuxsh", &init, &[], "") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the shell's marker", |t| {
        t.contains(rxen_initramfs::SHELL_MARKER)
    });
    let mut console = common::guests::Console::attach(&env, "linuxsh");
    // The typed line is echoed back as typed; only the shell's arithmetic makes "42-".
    console.type_line("echo $((6*7))-RXEN-SHELL; uname -r");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !console.text().contains("42-RXEN-SHELL") {
        assert!(
            Instant::now() < deadline,
            "no output from the shell on xm console:\n{}\n--- boot text:\n{}",
            console.text(),
            linux::tail(&boot_text(&state), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_uname(&console);
    console.type_line("/sbin/poweroff");
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.get("/domains/linuxsh").1["state"] != "shutdown" {
        assert!(
            Instant::now() < deadline,
            "poweroff typed on the console did not end the domain:\n{}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_powered_off(&env, "linuxsh");
}

/// `uname -r` (typed after the echo) printed the kernel's release.
fn wait_for_uname(console: &common::guests::Console) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !console.text().contains("-amd64") {
        assert!(
            Instant::now() < deadline,
            "no uname output:\n{}",
            console.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `disk = [ 'file:IMG,xvda,w' ]` with an ext2 image made by `mke2fs -d`: Linux's
/// xen-blkfront connects to the VMM's blkback (xenbus state 4 on both ends), `/init`
/// mounts `/dev/xvda` with ext4 (which reads ext2), prints the image's file and writes
/// one back; after `xm shutdown` the image holds it.
#[test]
fn linux_blkfront_mounts_an_ext2_disk() {
    let _serial = one_linux_at_a_time();
    let test = "linux_blkfront_mounts_an_ext2_disk";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::kernel(test) else {
        return;
    };
    let Some(files) = disk_modules(&kernel, test) else {
        return;
    };
    let tree = tempfile_dir(test);
    std::fs::write(tree.join("hello.txt"), format!("{DISK_FILE}\n")).unwrap();
    let Some(img) = ext2_image(test, &tree) else {
        return;
    };
    let mut before = load_disk_modules();
    before.push_str(
        "/bin/busybox mount -t ext4 /dev/xvda /mnt && echo RXEN-MOUNTED\n\
         /bin/busybox cat /mnt/hello.txt\n\
         echo written-by-linux > /mnt/from-linux.txt\n\
         /bin/busybox umount /mnt && echo RXEN-UNMOUNTED\n",
    );
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
    let extra = format!("disk = [ 'file:{},xvda,w' ]\n", img.display());
    let Some(env) = boot(test, "linuxdisk", &shell_init(&before), &files, &extra) else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "/init's marker", |t| t.contains(INIT_MARKER));
    let text = boot_text(&state);
    assert!(
        text.contains(DISK_FILE) && text.contains("RXEN-UNMOUNTED"),
        "the disk's file was not printed:\n{}",
        linux::tail(&text, 40)
    );
    let domid = common::domid_of(&env, "linuxdisk");
    let front = common::read_node(
        &env,
        &format!("/local/domain/{domid}/device/vbd/51712/state"),
    );
    let back = common::read_node(
        &env,
        &format!("/local/domain/0/backend/vbd/{domid}/51712/state"),
    );
    assert_eq!(
        (front.as_deref(), back.as_deref()),
        (Some("4"), Some("4")),
        "xenbus states"
    );
    linux::shutdown_powers_off(&env, "linuxdisk");
    let cat = std::process::Command::new("debugfs")
        .args(["-R", "cat /from-linux.txt"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cat.stdout).contains("written-by-linux"),
        "the file Linux wrote is not in the image: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&img);
}

/// The issue's root disk, booted as a user would: an ext2 image holding busybox and
/// `/sbin/init`; the initramfs is made by the `rxen-mkinitramfs` tool with
/// blkfront's and ext4's modules, and the config's `root = "/dev/xvda"` (xl's key: it
/// puts `root=` on the command line) makes its `/init` mount xvda and `switch_root`
/// to it; the disk's `/sbin/init` runs as PID 1 from xvda, prints its marker and a
/// file of the disk, and powers off.
#[test]
fn linux_switches_root_to_an_ext2_disk() {
    let _serial = one_linux_at_a_time();
    let test = "linux_switches_root_to_an_ext2_disk";
    if !kvm_available(test) {
        return;
    }
    let Some((kernel, busybox, modules)) = linux::root_disk_inputs(test) else {
        return;
    };
    let tree = tempfile_dir(test);
    for d in ["bin", "sbin", "etc", "dev", "proc"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy(&busybox, tree.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh")).unwrap();
    std::fs::write(tree.join("etc/marker"), format!("{DISK_FILE}\n")).unwrap();
    let root_init = tree.join("sbin/init");
    std::fs::write(
        &root_init,
        "#!/bin/sh\necho RXEN-ROOT-INIT pid $$\n/bin/busybox cat /etc/marker\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&root_init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(img) = ext2_image(test, &tree) else {
        return;
    };
    let env = Env::start("linuxroot");
    let ramdisk = linux::mkinitramfs(&env, &busybox, &modules);
    let cfg = env.dir.join("linuxroot.cfg");
    let extra = format!(
        "disk = [ 'file:{},xvda,w' ]\nroot = \"/dev/xvda ro\"\n",
        img.display()
    );
    std::fs::write(&cfg, linux::config("linuxroot", &kernel, &ramdisk, &extra)).unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the disk's init to power off", |t| {
        t.contains("reboot: ")
    });
    let text = boot_text(&state);
    assert!(
        text.contains(rxen_initramfs::ROOT_MARKER),
        "rxen-mkinitramfs's /init did not switch to /dev/xvda:\n{}",
        linux::tail(&text, 40)
    );
    assert!(
        text.contains("RXEN-ROOT-INIT pid 1") && text.contains(DISK_FILE),
        "the disk's /sbin/init did not run as PID 1:\n{}",
        linux::tail(&text, 40)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.get("/domains/linuxroot").1["state"] != "shutdown" {
        assert!(Instant::now() < deadline, "the domain did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_powered_off(&env, "linuxroot");
    let _ = std::fs::remove_dir_all(&tree);
    let _ = std::fs::remove_file(&img);
}

/// The page busybox's httpd serves in the vif test.
const LINUX_PAGE: &str = "Hello from Linux on rxen\n";

/// `vif = [ 'bridge=BR' ]` on the test's private bridge: Linux's xen-netfront
/// (insmod'ed from the initramfs) connects to the VMM's netback, `/init` gives eth0 a
/// static address with busybox `ip` and starts busybox's httpd; a ping from the
/// namespace on the bridge is answered by Linux and curl gets the page.
#[test]
fn linux_netfront_answers_ping_on_a_bridge() {
    let _serial = one_linux_at_a_time();
    let test = "linux_netfront_answers_ping_on_a_bridge";
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = linux::kernel(test) else {
        return;
    };
    let Some(netfront) = linux::module(&kernel, "xen-netfront.ko", test) else {
        return;
    };
    let Some(net) = common::netns::test_net(test) else {
        return;
    };
    let ip = net.addr(2);
    let before = format!(
        "/bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox insmod /lib/xen-netfront.ko\n\
         i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done\n\
         /bin/busybox ip link set lo up\n\
         /bin/busybox ip addr add {ip}/24 dev eth0\n\
         /bin/busybox ip link set eth0 up && echo RXEN-ETH0-UP\n\
         /bin/busybox httpd -p 80 -h /www && echo RXEN-HTTPD-UP\n"
    );
    let files = [
        ("lib/xen-netfront.ko", std::fs::read(netfront).unwrap()),
        ("www/index.html", LINUX_PAGE.as_bytes().to_vec()),
    ];
    let extra = format!(
        "vif = [ 'bridge={},vifname={}' ]\n",
        net.bridge,
        net.tap_name(0)
    );
    let Some(env) = boot(test, "linuxnet", &shell_init(&before), &files, &extra) else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "/init's marker", |t| t.contains(INIT_MARKER));
    let text = boot_text(&state);
    assert!(
        text.contains("RXEN-ETH0-UP"),
        "eth0 did not come up:\n{}",
        linux::tail(&text, 40)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match net.ping(&ip, Duration::from_secs(2)) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no answer to ping {ip}: {e}\n{}",
                linux::tail(&boot_text(&state), 40)
            ),
        }
    }
    let url = format!("http://{ip}/index.html");
    let page = net.exec("curl", &["-s", "--max-time", "10", &url]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains(LINUX_PAGE.trim()),
        "curl {url}: {:?}\n{}",
        page,
        linux::tail(&boot_text(&state), 40)
    );
    let domid = common::domid_of(&env, "linuxnet");
    let front = common::read_node(&env, &format!("/local/domain/{domid}/device/vif/0/state"));
    let back = common::read_node(
        &env,
        &format!("/local/domain/0/backend/vif/{domid}/0/state"),
    );
    assert_eq!(
        (front.as_deref(), back.as_deref()),
        (Some("4"), Some("4")),
        "xenbus states"
    );
    linux::shutdown_powers_off(&env, "linuxnet");
}

/// `xm save` of a Linux domain goes through Xen's suspend protocol (Linux advertises
/// `control/feature-suspend`; xend writes `suspend` to `control/shutdown`, Linux's
/// `do_suspend` freezes its devices and makes `SCHEDOP_shutdown(SHUTDOWN_suspend)`),
/// the domain is gone and the image written; `xm restore` makes a new domain in which
/// the hypercall returns 0, Linux resumes (event channels, xenbus, hvc0 rebound) and
/// `/init`'s counter carries on past where it was; `xm shutdown` still powers it off.
#[test]
fn linux_survives_save_and_restore() {
    let _serial = one_linux_at_a_time();
    let test = "linux_survives_save_and_restore";
    let Some(env) = boot(test, "linuxsave", &counter_init(), &[], "") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the counter to reach 5", |t| {
        last_count(t).is_some_and(|n| n >= 5)
    });
    let mut before = last_count(&boot_text(&state)).unwrap();
    let image = env.dir.join("linuxsave.save");
    let save = env.xm(&["save", "linuxsave", image.to_str().unwrap()]);
    let text = boot_text(&state);
    assert!(
        save.status.success(),
        "xm save: {}\n{}\n--- the VMM's own lines:\n{}",
        String::from_utf8_lossy(&save.stderr),
        linux::tail(&text, 40),
        linux::tail(&linux::vmm_lines(&text), 30)
    );
    assert_eq!(env.get("/domains/linuxsave").0, 404, "the domain is gone");
    assert!(image.is_file(), "no image at {}", image.display());
    before = before.max(last_count(&text).unwrap_or(0));
    eprintln!("{test}: saved at count {before}");
    env.xm_ok(&["restore", image.to_str().unwrap()]);
    linux::wait_for_text(&state, "the counter to go on after the restore", |t| {
        last_count(t).is_some_and(|n| n >= before + 5)
    });
    eprintln!(
        "{test}: restored; count {:?}",
        last_count(&boot_text(&state))
    );
    linux::shutdown_powers_off(&env, "linuxsave");
}

/// What the SMP test's `/init` prints when both CPUs ran its loops.
const SMP_MARKER: &str = "RXEN-SMP-DONE";

/// `vcpus = 2`: Linux brings up CPU 1 (`VCPUOP_initialise` with its full PV context,
/// `VCPUOP_up`), both CPUs are online, and two busy loops pinned with busybox
/// `taskset` each run on their own CPU in guest user mode; `/proc/stat` shows user
/// time on both CPUs; CPU 1 goes offline and comes back through sysfs; then `/init`
/// prints [`SMP_MARKER`] and powers off.
#[test]
fn linux_runs_on_two_vcpus() {
    let _serial = one_linux_at_a_time();
    let test = "linux_runs_on_two_vcpus";
    let init = format!(
        "#!/bin/sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         echo RXEN-NPROC=$(/bin/busybox nproc)\n\
         echo RXEN-PROCESSORS=$(/bin/busybox grep -c ^processor /proc/cpuinfo)\n\
         echo RXEN-ONLINE=$(/bin/busybox cat /sys/devices/system/cpu/online)\n\
         for c in 0 1; do\n\
           /bin/busybox taskset -c $c /bin/sh -c 'i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done; echo RXEN-LOOP-DONE-on-$(/bin/busybox taskset -p $$)' &\n\
         done\n\
         wait\n\
         /bin/busybox grep ^cpu /proc/stat\n\
         echo 0 > /sys/devices/system/cpu/cpu1/online\n\
         echo RXEN-AFTER-DOWN=$(/bin/busybox cat /sys/devices/system/cpu/online)\n\
         echo 1 > /sys/devices/system/cpu/cpu1/online\n\
         echo RXEN-AFTER-UP=$(/bin/busybox cat /sys/devices/system/cpu/online)\n\
         /bin/busybox taskset -c 1 /bin/sh -c 'echo RXEN-BACK-ON-$(/bin/busybox taskset -p $$)'\n\
         echo {SMP_MARKER}\n\
         /bin/busybox poweroff -f\n"
    );
    let Some(env) = boot(test, "linuxsmp", &init, &[], "vcpus = 2\n") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the SMP marker", |t| {
        t.contains(SMP_MARKER) && t.contains("reboot: ")
    });
    let text = boot_text(&state);
    let tail = linux::tail(&text, 40);
    let report: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("RXEN-") || l.contains("smp: ") || l.starts_with("cpu"))
        .collect();
    eprintln!("{test}:\n{}", report.join("\n"));
    assert!(
        text.contains("RXEN-ONLINE=0-1"),
        "CPU 1 not online:\n{tail}"
    );
    assert!(text.contains("RXEN-NPROC=2"), "nproc is not 2:\n{tail}");
    assert!(text.contains("RXEN-PROCESSORS=2"), "/proc/cpuinfo:\n{tail}");
    assert_eq!(
        text.matches("RXEN-LOOP-DONE").count(),
        2,
        "both loops finish:\n{tail}"
    );
    // Each loop ran pinned to its CPU (busybox: "pid N's current affinity mask: 1").
    for mask in ["mask: 1", "mask: 2"] {
        assert!(
            text.lines()
                .any(|l| l.contains("RXEN-LOOP-DONE") && l.contains(mask)),
            "no loop with affinity {mask}:\n{tail}"
        );
    }
    // CPU hotplug: Linux takes CPU 1 down (`VCPUOP_down` of itself from its
    // `play_dead`) and up again (`VCPUOP_up`: the vCPU resumes after its down), and a
    // process pinned to it runs there again.
    assert!(
        text.contains("RXEN-AFTER-DOWN=0\n") || text.contains("RXEN-AFTER-DOWN=0\r"),
        "CPU 1 did not go offline:\n{tail}"
    );
    assert!(
        text.contains("RXEN-AFTER-UP=0-1"),
        "CPU 1 did not come back:\n{tail}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("RXEN-BACK-ON-") && l.contains("mask: 2")),
        "nothing ran on CPU 1 after it came back:\n{tail}"
    );
    // `/proc/stat`'s `cpuN user nice system ...` (in USER_HZ ticks): both CPUs ran
    // user code.
    for cpu in ["cpu0 ", "cpu1 "] {
        let line = text
            .lines()
            .find_map(|l| l.find(cpu).map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no {cpu} line in /proc/stat:\n{tail}"));
        let user: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad /proc/stat line {line:?}"));
        assert!(user > 0, "{cpu}ran no user code: {line:?}\n{tail}");
    }
}

/// What `/init` prints after the segment probes.
const SEGMENTS_MARKER: &str = "RXEN-SEGMENTS-DONE";

/// What a guest user process can do with segments and rxen's pages, on two vCPUs
/// (docs/linux-guest.md, "Segments, the failsafe callback and the exception stacks"):
///
/// * a process whose `rt_sigreturn` restores a bad CS (0x1234) makes Linux's `iret`
///   carry it; rxen bounces to Linux's failsafe callback, as Xen does, and Linux kills
///   the process with SIGSEGV while the domain goes on (before: the domain crashed
///   with "iret to foreign selectors");
/// * no process can read a vCPU's exception stack (rxen's slot 257): SIGSEGV (before:
///   the page was user-readable and writable from every vCPU);
/// * `modify_ldt` is accepted; what loading its selector, a `set_thread_area` TLS
///   entry and `lsl` of the CPUNODE selector give on this host (KVM's PVM runs CPL-3
///   code on the host's own GDT and no LDT) is printed, not required.
#[test]
fn linux_user_processes_survive_bad_iret_and_cannot_reach_exception_stacks() {
    let _serial = one_linux_at_a_time();
    let test = "linux_user_processes_survive_bad_iret_and_cannot_reach_exception_stacks";
    let Some(probe) = linux::probe(test) else {
        return;
    };
    // `rxen_vmm::pv::rxen_area::exception_stack_va(0)` and `(1)`, near their tops.
    let stacks = [0xffff_8080_0000_8f00u64, 0xffff_8080_0004_7f00];
    let init = format!(
        "#!/bin/sh\n\
         for c in 0 1; do /bin/busybox taskset -c $c /bin/probe getcpu; done\n\
         /bin/probe tls\n\
         echo RXEN-TLS-STATUS=$?\n\
         /bin/probe ldt\n\
         echo RXEN-LDT-STATUS=$?\n\
         /bin/probe badiret\n\
         echo RXEN-BADIRET-STATUS=$?\n\
         /bin/busybox taskset -c 1 /bin/probe peek {:x}\n\
         echo RXEN-PEEK0-STATUS=$?\n\
         /bin/busybox taskset -c 0 /bin/probe peek {:x}\n\
         echo RXEN-PEEK1-STATUS=$?\n\
         echo {SEGMENTS_MARKER}\n\
         /bin/busybox poweroff -f\n",
        stacks[0], stacks[1]
    );
    let files = [("bin/probe", std::fs::read(&probe).unwrap())];
    let Some(env) = boot(test, "linuxseg", &init, &files, "vcpus = 2\n") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "the segments marker", |t| {
        t.contains(SEGMENTS_MARKER) && t.contains("reboot: ")
    });
    let text = boot_text(&state);
    let tail = linux::tail(&text, 40);
    let report: Vec<&str> = text.lines().filter(|l| l.contains("RXEN-")).collect();
    eprintln!("{test}:\n{}", report.join("\n"));
    assert!(
        text.contains("RXEN-BADIRET-STATUS=139") && !text.contains("badiret survived"),
        "bad iret:\n{tail}"
    );
    for v in 0..2 {
        assert!(
            text.contains(&format!("RXEN-PEEK{v}-STATUS=139")) && !text.contains("peek read"),
            "vCPU {v}'s exception stack readable from user mode:\n{tail}"
        );
    }
    assert!(
        text.contains("RXEN-PROBE ldt modify_ldt=0"),
        "modify_ldt:\n{tail}"
    );
    // `reboot: ` is printed before Linux's SCHEDOP_shutdown ends the domain.
    common::wait_until("linuxseg to end", || {
        env.get("/domains/linuxseg").1["state"] == "shutdown"
    });
    assert_powered_off(&env, "linuxseg");
}

/// Where `scripts/make-debian-rootfs.sh` leaves its image (`RXEN_DEBIAN_ROOTFS`
/// overrides).
fn debian_rootfs() -> std::path::PathBuf {
    std::env::var_os("RXEN_DEBIAN_ROOTFS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/debian-rootfs/bookworm.img")
        })
}

/// What systemd's autologin on hvc0 leaves: root's bash prompt.
const DEBIAN_PROMPT: &str = "root@rxen-debian:~#";

/// A real Debian userland as the root file system: bookworm's systemd as PID 1 from
/// an ext4 image (`scripts/make-debian-rootfs.sh`) on xvda, switched to by
/// `rxen-mkinitramfs`'s `/init`; udev, journald, `serial-getty@hvc0` with its
/// autologin come up, a command typed through `xm console` runs, and `xm shutdown -w`
/// powers the domain off through systemd (`reboot: Power down`).
///
/// Before rxen gave PV guests XSAVE, most boots went wrong in Debian's user space
/// before the login (systemd's PID 1 aborted in `vtable_member_hash_func`, services
/// failed with EINVAL, journald "Can't write entry"): glibc's AVX-512 functions ran on
/// another process's vector registers (docs/linux-guest.md, "XSAVE"). Skips loudly
/// without the image; `RXEN_DEBIAN_BOOT_LOG=FILE` keeps what the domain printed,
/// `RXEN_DEBIAN_EXTRA` adds kernel arguments.
#[test]
fn linux_boots_debian_userland_with_systemd() {
    let _serial = one_linux_at_a_time();
    let test = "linux_boots_debian_userland_with_systemd";
    if !kvm_available(test) {
        return;
    }
    let image = debian_rootfs();
    if !image.is_file() {
        common::guests::skip(
            test,
            &format!(
                "no Debian root file system at {} (make it, as root, with scripts/make-debian-rootfs.sh, or set RXEN_DEBIAN_ROOTFS)",
                image.display()
            ),
        );
        return;
    }
    let Some((kernel, busybox, modules)) = linux::root_disk_inputs(test) else {
        return;
    };
    let env = Env::start("debian");
    // The domain writes its disk (journal, machine-id, ...): boot a sparse copy.
    let disk = env.dir.join("bookworm.img");
    let copied = std::process::Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(&image)
        .arg(&disk)
        .status()
        .expect("cp");
    assert!(copied.success(), "cp {} failed", image.display());
    let ramdisk = linux::mkinitramfs(&env, &busybox, &modules);
    let cfg = env.dir.join("debian.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"debian\"\nkernel = \"{}\"\nramdisk = \"{}\"\nmemory = 512\nvcpus = 2\n\
             extra = \"console=hvc0 earlyprintk=xen {}\"\nroot = \"/dev/xvda ro\"\n\
             disk = [ 'file:{},xvda,w' ]\non_crash = \"preserve\"\non_poweroff = \"preserve\"\n",
            kernel.display(),
            ramdisk.display(),
            // Extra kernel arguments to look into a boot, e.g.
            // "systemd.log_target=kmsg printk.devkmsg=on".
            std::env::var("RXEN_DEBIAN_EXTRA").unwrap_or_default(),
            disk.display()
        ),
    )
    .unwrap();
    let started = Instant::now();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "systemd's autologin on hvc0", |t| {
        t.contains(DEBIAN_PROMPT)
    });
    let text = boot_text(&state);
    eprintln!(
        "{test}: root shell on hvc0 {:.1} s after xm create",
        started.elapsed().as_secs_f64()
    );
    assert!(
        text.contains("systemd 252") && text.contains("login: root (automatic login)"),
        "systemd did not log root in on hvc0:\n{}",
        linux::tail(&text, 60)
    );
    let mut console = common::guests::Console::attach(&env, "debian");
    console.type_line("echo DEBIAN-$(cat /etc/debian_version)-$(systemctl is-system-running)-END");
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let seen = console.text();
        // The typed line is echoed as typed; only the shell's expansion makes "DEBIAN-1".
        if let Some(at) = seen.find("DEBIAN-1") {
            if let Some(end) = seen[at..].find("-END") {
                break seen[at..at + end].to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no answer from the shell on xm console:\n{seen}\n--- boot text:\n{}",
            linux::tail(&boot_text(&state), 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("{test}: {answer}");
    assert!(answer.starts_with("DEBIAN-12."), "{answer}");
    if !answer.ends_with("-running") {
        // `systemctl --failed` lists the failed units, then their count.
        let from = console.len();
        console.type_line("systemctl --failed --no-pager --no-legend; echo FAILED-LISTED");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !console.text_from(from).contains("\nFAILED-LISTED") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "systemd is not running cleanly ({answer}); failed units:\n{}",
            console.text_from(from)
        );
    }
    drop(console);
    let down = env.xm(&["shutdown", "-w", "--timeout", "180", "debian"]);
    let text = boot_text(&state);
    assert!(
        down.status.success(),
        "xm shutdown: {}\n{}",
        String::from_utf8_lossy(&down.stderr),
        linux::tail(&text, 40)
    );
    if let Some(keep) = std::env::var_os("RXEN_DEBIAN_BOOT_LOG") {
        std::fs::write(keep, &text).unwrap();
    }
    // x86 PV Linux registers no power-off handler: the reboot system call's power-off
    // becomes a halt ("reboot: System halted"), which Xen's PV machine_halt turns into
    // SCHEDOP_shutdown(poweroff).
    assert!(
        text.contains("systemd-shutdown[1]: Powering off.") && text.contains("reboot: "),
        "systemd did not power the domain off:\n{}",
        linux::tail(&text, 40)
    );
    assert_powered_off(&env, "debian");
    let _ = std::fs::remove_file(&disk);
}

/// The last complete `RXEN-MEMTOTAL-<kB>-kB` the balloon test's `/init` printed.
fn last_mem_total(text: &str) -> Option<u64> {
    text.split("RXEN-MEMTOTAL-")
        .skip(1)
        .filter_map(|s| s.split_once("-kB").and_then(|(n, _)| n.parse().ok()))
        .last()
}

/// `xm mem-set` balloons Linux down and up: xend writes `memory/target`, Linux's
/// xen-balloon driver gives pages back (`XENMEM_decrease_reservation`, after unmapping
/// them from its direct map) and takes them again (`XENMEM_populate_physmap`);
/// `MemTotal` follows. Then `xm shutdown` powers the domain off.
#[test]
fn linux_balloons_down_and_up_with_xm_mem_set() {
    let _serial = one_linux_at_a_time();
    let test = "linux_balloons_down_and_up_with_xm_mem_set";
    let init = format!(
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\necho {INIT_MARKER}\n\
         while true; do /bin/busybox awk '/^MemTotal:/ {{ print \"RXEN-MEMTOTAL-\" $2 \"-kB\" }}' /proc/meminfo; /bin/busybox sleep 0.5; done\n"
    );
    let Some(env) = boot(test, "linuxbal", &init, &[], "maxmem = 256\n") else {
        return;
    };
    let state = env.dir.join("state");
    linux::wait_for_text(&state, "MemTotal from /init", |t| {
        last_mem_total(t).is_some()
    });
    let full = last_mem_total(&boot_text(&state)).unwrap();
    eprintln!("{test}: MemTotal {full} kB at boot");
    let started = Instant::now();
    env.xm_ok(&["mem-set", "linuxbal", "128"]);
    linux::wait_for_text(&state, "MemTotal to drop by ~128 MiB", |t| {
        last_mem_total(t).is_some_and(|kb| kb + 120 * 1024 <= full)
    });
    let low = last_mem_total(&boot_text(&state)).unwrap();
    eprintln!(
        "{test}: MemTotal {low} kB {:.1} s after mem-set 128",
        started.elapsed().as_secs_f64()
    );
    assert!(
        low + 136 * 1024 >= full,
        "ballooned too far: {low} kB of {full} kB"
    );
    let started = Instant::now();
    env.xm_ok(&["mem-set", "linuxbal", "256"]);
    linux::wait_for_text(&state, "MemTotal to come back", |t| {
        last_mem_total(t).is_some_and(|kb| kb + 8 * 1024 >= full)
    });
    eprintln!(
        "{test}: MemTotal {:?} kB {:.1} s after mem-set 256",
        last_mem_total(&boot_text(&state)),
        started.elapsed().as_secs_f64()
    );
    linux::shutdown_powers_off(&env, "linuxbal");
}
