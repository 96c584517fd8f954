//! Issue 10, first part: an unmodified Xen guest's netfront against the VMM's netback
//! on a TAP device, under real xend and xenstored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::guests::{mini_os_net, Console};
use common::{kvm_available, wait_until, Env};

/// Sends one Ethernet frame into TAP `ifname` from the host side (an `AF_PACKET`
/// socket bound to it): the VMM reads it from the TAP and passes it to the guest.
fn send_frame(ifname: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain socket calls on a fresh descriptor with a sockaddr_ll that lives
    // for the calls; the descriptor is closed before returning.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "no interface {ifname}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto {ifname}: {err}");
    }
}

/// Mini-OS (`mini-os-blk-net`) with `vif = [ 'bridge=xenbr0' ]`: xend generates a MAC
/// in Xen's range and writes libxl's vif nodes, the VMM creates TAP `vif<domid>.0`
/// (the bridge does not exist here: the TAP stays alone), Mini-OS's netfront connects
/// with rx-copy, a frame written into the TAP reaches it ("N bytes incoming"), and the
/// TAP and the nodes go with the domain.
#[test]
fn mini_os_netfront_connects_to_netback_on_a_tap() {
    if !kvm_available("mini_os_netfront_connects_to_netback_on_a_tap") {
        return;
    }
    let Some(kernel) = mini_os_net("mini_os_netfront_connects_to_netback_on_a_tap") else {
        return;
    };
    let env = Env::start("mini-os-net");
    let cfg = env.dir.join("mini-os.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"mosnet\"\nkernel = \"{}\"\nmemory = 32\nvif = [ 'bridge=xenbr0' ]\non_crash = \"preserve\"\n",
            kernel.display()
        ),
    )
    .unwrap();
    env.xm_ok(&["create", cfg.to_str().unwrap()]);
    let (_, dom) = env.get("/domains/mosnet");
    let domid = dom["domid"].as_u64().unwrap();
    let tap = format!("vif{domid}.0");
    let sys = format!("/sys/class/net/{tap}");
    assert!(
        Path::new(&sys).exists(),
        "{sys} missing while the domain runs"
    );
    let mut xs = env.xenstore();
    let backend = format!("/local/domain/0/backend/vif/{domid}/0");
    let frontend = format!("/local/domain/{domid}/device/vif/0");
    let mac = String::from_utf8(xs.read(0, &format!("{frontend}/mac")).unwrap()).unwrap();
    assert!(mac.starts_with("00:16:3e:"), "{mac}");
    assert_eq!(
        xs.read(0, &format!("{backend}/mac")).unwrap(),
        mac.as_bytes()
    );
    assert_eq!(xs.read(0, &format!("{backend}/bridge")).unwrap(), b"xenbr0");
    let console = Console::attach(&env, "mosnet");
    wait_until("Mini-OS's netfront to connect", || {
        let connected = xs
            .read(0, &format!("{backend}/state"))
            .map(|s| s == b"4")
            .unwrap_or(false);
        connected && console.text().contains(&format!("mac is {mac}"))
    });
    let text = console.text();
    for line in [
        "NETFRONT for device/vif/0",
        &format!("backend at {backend}"),
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        xs.read(0, &format!("{frontend}/request-rx-copy")).unwrap(),
        b"1"
    );
    // A broadcast frame from the host reaches the guest's RX ring.
    let mut frame = vec![0xffu8; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
    frame.resize(77, 0x5a);
    let before = console.len();
    send_frame(&tap, &frame);
    wait_until("the frame to reach Mini-OS", || {
        console.text_from(before).contains("77 bytes incoming")
    });
    env.xm_ok(&["destroy", "mosnet"]);
    wait_until("the TAP and the vif nodes to go with the domain", || {
        !Path::new(&sys).exists() && xs.read(0, &backend).is_err() && xs.read(0, &frontend).is_err()
    });
}
