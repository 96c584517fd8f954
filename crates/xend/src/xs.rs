//! The xenstore entries of a domain, as Xen's toolstack writes them, through a
//! privileged connection to xenstored. Runs on blocking threads.

use std::path::Path;

use rxen_xenstore::client::{Client, ClientError};
use rxen_xlcfg::devices::DiskSpec;
use rxen_xlcfg::DomainSpec;

use rxen_vmm_api::BootReport;

use crate::restored_devices::RestoredFrontend;

fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Runs `write` in a transaction, retrying on conflict (`EAGAIN`) as Xen's toolstack
/// does when concurrent creates touch `/local/domain` together.
fn in_transaction(
    c: &mut Client,
    write: impl Fn(&mut Client, u32) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    for attempt in 0.. {
        let tx = c.transaction_start()?;
        match write(c, tx) {
            Ok(()) => match c.transaction_end(tx, true) {
                Ok(()) => break,
                Err(ClientError::Xs(e)) if e == "EAGAIN" && attempt < 100 => {
                    std::thread::sleep(std::time::Duration::from_micros(200 * (attempt % 10 + 1)));
                    continue;
                }
                Err(e) => return Err(e),
            },
            Err(e) => {
                let _ = c.transaction_end(tx, false);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Writes a domain's entries as libxl does: `/local/domain/N/{name, domid, vm,
/// memory/target, memory/static-max, cpu/I/availability, control, data}`,
/// `/vm/UUID/{name, uuid, start_time, image/ostype, ...}` and `/libxl/N`. The domain
/// may read its subtree and write `control` and `data`; it sees nothing of other
/// domains. The domain is introduced later ([`introduce`]), once its VMM reported
/// where its ring is.
///
/// `restored`: frontend nodes of connected devices to write over the layout, in the
/// same transaction (after xenstored lost a live domain's entries: the guest wrote
/// them once and never writes them again; empty otherwise).
pub fn populate(
    socket: &Path,
    domid: u32,
    uuid: &str,
    spec: &DomainSpec,
    start_time: f64,
    restored: &[RestoredFrontend],
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    in_transaction(&mut c, |c, tx| {
        write_entries(c, tx, domid, uuid, spec, start_time)?;
        write_restored(c, tx, domid, restored)
    })
}

/// Writes the frontend nodes of a live domain's connected devices over the layout
/// just written (`crate::restored_devices`).
fn write_restored(
    c: &mut Client,
    tx: u32,
    domid: u32,
    restored: &[RestoredFrontend],
) -> Result<(), ClientError> {
    for f in restored {
        let front = match f.class {
            "vbd" => crate::vbd::paths(domid, f.devid)[1].clone(),
            _ => crate::vif::paths(domid, f.devid)[1].clone(),
        };
        for (k, v) in &f.nodes {
            c.write(tx, &format!("{front}/{k}"), v.as_bytes())?;
        }
    }
    Ok(())
}

/// Publishes where the domain's xenstore and console rings are
/// (`/local/domain/N/{store,console}/{ring-ref,port}`) and introduces the domain to
/// xenstored, which then opens its domain socket for the VMM's relay.
pub fn introduce(socket: &Path, domid: u32, boot: &BootReport) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    let home = domain_path(domid);
    in_transaction(&mut c, |c, tx| {
        for (key, value) in [
            ("store/ring-ref", boot.store_mfn.to_string()),
            ("store/port", boot.store_evtchn.to_string()),
            ("console/ring-ref", boot.console_mfn.to_string()),
            ("console/port", boot.console_evtchn.to_string()),
            ("console/type", "xenconsoled".to_string()),
            ("console/output", "pty".to_string()),
        ] {
            c.write(tx, &format!("{home}/{key}"), value.as_bytes())?;
        }
        Ok(())
    })?;
    c.introduce(domid, boot.store_mfn, boot.store_evtchn)
}

/// Whether xenstored holds `/local/domain/N`.
pub fn has_domain(socket: &Path, domid: u32) -> Result<bool, ClientError> {
    match Client::connect(socket)?.read(0, &domain_path(domid)) {
        Ok(_) => Ok(true),
        Err(ClientError::Xs(e)) if e == "ENOENT" => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes domain 0's own entries (`/local/domain/0/{name,domid}`), as xl's host does.
pub fn populate_dom0(socket: &Path) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    in_transaction(&mut c, |c, tx| {
        c.write(
            tx,
            "/local/domain/0/name",
            rxen_xend_api::DOM0_NAME.as_bytes(),
        )?;
        c.write(tx, "/local/domain/0/domid", b"0")?;
        Ok(())
    })
}

fn write_entries(
    c: &mut Client,
    tx: u32,
    domid: u32,
    uuid: &str,
    spec: &DomainSpec,
    start_time: f64,
) -> Result<(), ClientError> {
    let home = domain_path(domid);
    let vm = format!("/vm/{uuid}");
    let read_only = ["n0".to_string(), format!("r{domid}")];
    let ro: Vec<&str> = read_only.iter().map(String::as_str).collect();
    let own = format!("n{domid}");
    {
        c.write(tx, &home, b"")?;
        c.set_perms(tx, &home, &ro)?;
        c.write(tx, &format!("{home}/name"), spec.name.as_bytes())?;
        c.write(tx, &format!("{home}/domid"), domid.to_string().as_bytes())?;
        c.write(tx, &format!("{home}/vm"), vm.as_bytes())?;
        c.write(
            tx,
            &format!("{home}/memory/target"),
            (spec.memory * 1024).to_string().as_bytes(),
        )?;
        c.write(
            tx,
            &format!("{home}/memory/static-max"),
            (spec.maxmem.unwrap_or(spec.memory) * 1024)
                .to_string()
                .as_bytes(),
        )?;
        let max = spec.maxvcpus.unwrap_or(spec.vcpus);
        for i in 0..max {
            let avail = if i < spec.vcpus { "online" } else { "offline" };
            c.write(
                tx,
                &format!("{home}/cpu/{i}/availability"),
                avail.as_bytes(),
            )?;
        }
        for sub in ["control", "data"] {
            c.write(tx, &format!("{home}/{sub}"), b"")?;
            c.set_perms(tx, &format!("{home}/{sub}"), &[&own])?;
        }
        c.write(tx, &format!("{home}/control/shutdown"), b"")?;
        c.set_perms(tx, &format!("{home}/control/shutdown"), &[&own])?;
        c.write(tx, &vm, b"")?;
        c.set_perms(tx, &vm, &ro)?;
        c.write(tx, &format!("{vm}/name"), spec.name.as_bytes())?;
        c.write(tx, &format!("{vm}/uuid"), uuid.as_bytes())?;
        c.write(
            tx,
            &format!("{vm}/start_time"),
            format!("{start_time:.2}").as_bytes(),
        )?;
        c.write(tx, &format!("{vm}/image/ostype"), b"linux")?;
        let libxl = format!("/libxl/{domid}");
        c.write(tx, &format!("{libxl}/type"), b"pv")?;
        c.write(tx, &format!("{libxl}/dm-version"), b"none")?;
        c.write(
            tx,
            &format!("{vm}/memory"),
            spec.memory.to_string().as_bytes(),
        )?;
        c.write(
            tx,
            &format!("{vm}/vcpus"),
            spec.vcpus.to_string().as_bytes(),
        )?;
        c.write(
            tx,
            &format!("{vm}/vcpu_avail"),
            ((1u64 << spec.vcpus) - 1).to_string().as_bytes(),
        )?;
        for (k, a) in [
            ("on_poweroff", spec.on_poweroff),
            ("on_reboot", spec.on_reboot),
            ("on_crash", spec.on_crash),
        ] {
            let v = serde_json::to_value(a)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            c.write(tx, &format!("{vm}/{k}"), v.as_bytes())?;
        }
        if let Some(k) = &spec.kernel {
            c.write(tx, &format!("{vm}/image/kernel"), k.as_bytes())?;
        }
        c.write(tx, &format!("{vm}/image/cmdline"), spec.cmdline.as_bytes())?;
        for disk in &spec.disks {
            // Validated specs always have a device number.
            let Some(devid) = disk.devid() else { continue };
            write_vbd(c, tx, domid, devid, disk)?;
        }
        for (vif, devid) in spec.vifs.iter().zip(crate::vif::devids(&spec.vifs)) {
            write_dirs(c, tx, &crate::vif::layout(domid, devid, vif))?;
        }
        Ok(())
    }
}

/// Writes the backend and frontend directories of one vbd (`crate::vbd::layout`).
fn write_vbd(
    c: &mut Client,
    tx: u32,
    domid: u32,
    devid: u32,
    disk: &DiskSpec,
) -> Result<(), ClientError> {
    for dir in crate::vbd::layout(domid, devid, disk) {
        c.write(tx, &dir.path, b"")?;
        let perms: Vec<&str> = dir.perms.iter().map(String::as_str).collect();
        c.set_perms(tx, &dir.path, &perms)?;
        for (k, v) in &dir.nodes {
            c.write(tx, &format!("{}/{k}", dir.path), v.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes directories with their permissions and nodes.
fn write_dirs(c: &mut Client, tx: u32, dirs: &[crate::vbd::Dir]) -> Result<(), ClientError> {
    for dir in dirs {
        c.write(tx, &dir.path, b"")?;
        let perms: Vec<&str> = dir.perms.iter().map(String::as_str).collect();
        c.set_perms(tx, &dir.path, &perms)?;
        for (k, v) in &dir.nodes {
            c.write(tx, &format!("{}/{k}", dir.path), v.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes a hot-plugged vbd's nodes (as at create), in one transaction.
pub fn add_vbd(socket: &Path, domid: u32, devid: u32, disk: &DiskSpec) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    in_transaction(&mut c, |c, tx| write_vbd(c, tx, domid, devid, disk))
}

/// Writes a hot-plugged vif's nodes (as at create), in one transaction.
pub fn add_vif(
    socket: &Path,
    domid: u32,
    devid: u32,
    vif: &rxen_xlcfg::devices::VifSpec,
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    let dirs = crate::vif::layout(domid, devid, vif);
    in_transaction(&mut c, |c, tx| write_dirs(c, tx, &dirs))
}

/// Removes a vbd's backend and frontend directories.
pub fn remove_vbd(socket: &Path, domid: u32, devid: u32) -> Result<(), ClientError> {
    remove_device(socket, &crate::vbd::paths(domid, devid))
}

/// Removes a vif's backend and frontend directories.
pub fn remove_vif(socket: &Path, domid: u32, devid: u32) -> Result<(), ClientError> {
    remove_device(socket, &crate::vif::paths(domid, devid))
}

/// Removes a device's directories (backend and frontend), in one transaction.
fn remove_device(socket: &Path, dirs: &[String]) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    in_transaction(&mut c, |c, tx| {
        for p in dirs {
            match c.rm(tx, p) {
                Ok(()) => {}
                Err(ClientError::Xs(e)) if e == "ENOENT" => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
}

/// Reads a node; `None` when it is absent or not a number.
fn read_u32(c: &mut Client, path: &str) -> Result<Option<u32>, ClientError> {
    match c.read(0, path) {
        Ok(v) => Ok(String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .trim()
            .parse()
            .ok()),
        Err(ClientError::Xs(e)) if e == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}

/// What xenstore says of one vbd's connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VbdState {
    pub backend_state: Option<u32>,
    pub frontend_state: Option<u32>,
    pub evtchn: Option<u32>,
    pub ring_ref: Option<u32>,
}

/// The states and ring details of vbds `devids` of a domain.
pub fn vbd_states(socket: &Path, domid: u32, devids: &[u32]) -> Result<Vec<VbdState>, ClientError> {
    let mut c = Client::connect(socket)?;
    devids
        .iter()
        .map(|&devid| {
            let [backend, frontend] = crate::vbd::paths(domid, devid);
            Ok(VbdState {
                backend_state: read_u32(&mut c, &format!("{backend}/state"))?,
                frontend_state: read_u32(&mut c, &format!("{frontend}/state"))?,
                evtchn: read_u32(&mut c, &format!("{frontend}/event-channel"))?,
                ring_ref: read_u32(&mut c, &format!("{frontend}/ring-ref"))?,
            })
        })
        .collect()
}

/// What xenstore says of one vif's connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VifState {
    pub backend_state: Option<u32>,
    pub frontend_state: Option<u32>,
    /// `event-channel`, or `event-channel-tx` when the frontend split them.
    pub evtchn: Option<u32>,
    pub tx_ring_ref: Option<u32>,
    pub rx_ring_ref: Option<u32>,
}

/// The states and ring details of vifs `devids` of a domain.
pub fn vif_states(socket: &Path, domid: u32, devids: &[u32]) -> Result<Vec<VifState>, ClientError> {
    let mut c = Client::connect(socket)?;
    devids
        .iter()
        .map(|&devid| {
            let [backend, frontend] = crate::vif::paths(domid, devid);
            let evtchn = match read_u32(&mut c, &format!("{frontend}/event-channel"))? {
                Some(p) => Some(p),
                None => read_u32(&mut c, &format!("{frontend}/event-channel-tx"))?,
            };
            Ok(VifState {
                backend_state: read_u32(&mut c, &format!("{backend}/state"))?,
                frontend_state: read_u32(&mut c, &format!("{frontend}/state"))?,
                evtchn,
                tx_ring_ref: read_u32(&mut c, &format!("{frontend}/tx-ring-ref"))?,
                rx_ring_ref: read_u32(&mut c, &format!("{frontend}/rx-ring-ref"))?,
            })
        })
        .collect()
}

/// Waits until the device whose backend directory is `backend` is Closed (6) or gone;
/// `false` when `timeout` passed first. Waits on a xenstore watch, not by polling.
pub fn wait_backend_closed(
    socket: &Path,
    backend: &str,
    timeout: std::time::Duration,
) -> Result<bool, ClientError> {
    const CLOSED: u32 = 6;
    let deadline = std::time::Instant::now() + timeout;
    let mut c = Client::connect(socket)?;
    let state = format!("{backend}/state");
    c.watch(&state, "detach")?;
    loop {
        let s = match c.read(0, &state) {
            Ok(v) => String::from_utf8_lossy(&v).trim().parse::<u32>().ok(),
            Err(ClientError::Xs(e)) if e == "ENOENT" => return Ok(true),
            Err(e) => return Err(e),
        };
        if s == Some(CLOSED) {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        c.set_timeout(Some(left))?;
        match c.next_event() {
            Ok(_) => {}
            Err(ClientError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false)
            }
            Err(e) => return Err(e),
        }
        c.set_timeout(Some(std::time::Duration::from_secs(5)))?;
    }
}

/// Removes the domain's entries and releases it (fires `@releaseDomain`).
pub fn teardown(socket: &Path, domid: u32, uuid: &str) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    let _ = c.release(domid);
    let _ = c.rm(0, &domain_path(domid));
    let _ = c.rm(0, &format!("/vm/{uuid}"));
    let _ = c.rm(0, &format!("/libxl/{domid}"));
    let _ = c.rm(0, &crate::vbd::backend_root(domid));
    let _ = c.rm(0, &crate::vif::backend_root(domid));
    Ok(())
}

/// Writes `/local/domain/N/<key>`.
pub fn write(socket: &Path, domid: u32, key: &str, value: &str) -> Result<(), ClientError> {
    Client::connect(socket)?.write(
        0,
        &format!("{}/{key}", domain_path(domid)),
        value.as_bytes(),
    )
}

/// Reads `/local/domain/N/<key>`; `None` when it does not exist.
pub fn read(socket: &Path, domid: u32, key: &str) -> Result<Option<String>, ClientError> {
    match Client::connect(socket)?.read(0, &format!("{}/{key}", domain_path(domid))) {
        Ok(v) => Ok(Some(
            String::from_utf8_lossy(&v)
                .trim_end_matches('\0')
                .to_string(),
        )),
        Err(ClientError::Xs(e)) if e == "ENOENT" => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes an absolute path.
pub fn write_abs(socket: &Path, path: &str, value: &str) -> Result<(), ClientError> {
    Client::connect(socket)?.write(0, path, value.as_bytes())
}

/// Is xenstored answering on `socket`?
pub fn alive(socket: &Path) -> bool {
    Client::connect(socket)
        .and_then(|mut c| c.read(0, "/"))
        .is_ok()
}

/// Removes what xenstore holds of domains xend does not know (after a crash of xend in
/// the middle of a create or destroy): `/local/domain/N` (but domain 0), `/libxl/N`,
/// `/vm/UUID`, vbd and vif backends, and their introduction. Returns what it removed.
pub fn remove_unknown(
    socket: &Path,
    known_domids: &[u32],
    known_uuids: &[String],
) -> Result<Vec<String>, ClientError> {
    let mut c = Client::connect(socket)?;
    let mut removed = Vec::new();
    let mut ids: Vec<String> = c.directory(0, "/local/domain").unwrap_or_default();
    ids.extend(c.directory(0, "/libxl").unwrap_or_default());
    ids.extend(
        c.directory(0, "/local/domain/0/backend/vbd")
            .unwrap_or_default(),
    );
    ids.extend(
        c.directory(0, "/local/domain/0/backend/vif")
            .unwrap_or_default(),
    );
    ids.sort();
    ids.dedup();
    for id in ids {
        let Ok(n) = id.parse::<u32>() else { continue };
        if n == 0 || known_domids.contains(&n) {
            continue;
        }
        let _ = c.release(n);
        let _ = c.rm(0, &domain_path(n));
        let _ = c.rm(0, &format!("/libxl/{n}"));
        let _ = c.rm(0, &crate::vbd::backend_root(n));
        let _ = c.rm(0, &crate::vif::backend_root(n));
        removed.push(format!("domain {n}"));
    }
    for uuid in c.directory(0, "/vm").unwrap_or_default() {
        if !known_uuids.contains(&uuid) {
            let _ = c.rm(0, &format!("/vm/{uuid}"));
            removed.push(format!("/vm/{uuid}"));
        }
    }
    Ok(removed)
}
