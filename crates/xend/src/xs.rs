//! The xenstore entries of a domain, as Xen's toolstack writes them, through a
//! privileged connection to xenstored. Runs on blocking threads.

use std::path::Path;

use rxen_xenstore::client::{Client, ClientError};
use rxen_xlcfg::DomainSpec;

/// Event channel and page the builder gives every domain's xenstore ring.
pub const STORE_EVTCHN: u32 = 1;
pub const STORE_MFN: u64 = 4;

fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Introduces the domain to xenstored and writes its entries:
/// `/local/domain/N/{name, domid, vm, memory/target, memory/static-max,
/// cpu/I/availability, control, data}` and `/vm/UUID/...`. The domain may read its
/// subtree and write `control` and `data`; it sees nothing of other domains.
pub fn populate(
    socket: &Path,
    domid: u32,
    uuid: &str,
    spec: &DomainSpec,
) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    // Concurrent creates touch /local/domain together: retry on conflict, as Xen's
    // toolstack does.
    for attempt in 0.. {
        let tx = c.transaction_start()?;
        match write_entries(&mut c, tx, domid, uuid, spec) {
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
    c.introduce(domid, STORE_MFN, STORE_EVTCHN)
}

fn write_entries(
    c: &mut Client,
    tx: u32,
    domid: u32,
    uuid: &str,
    spec: &DomainSpec,
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
        Ok(())
    }
}

/// Removes the domain's entries and releases it (fires `@releaseDomain`).
pub fn teardown(socket: &Path, domid: u32, uuid: &str) -> Result<(), ClientError> {
    let mut c = Client::connect(socket)?;
    let _ = c.release(domid);
    let _ = c.rm(0, &domain_path(domid));
    let _ = c.rm(0, &format!("/vm/{uuid}"));
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
