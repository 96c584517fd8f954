//! `xm list -l`: domains as `xl list -l` prints them, an array of
//! `{"domid": N, "config": <libxl_domain_config>}` with libxl's names (`c_info`,
//! `b_info`, `disks`, `nics`, `on_poweroff`, ...), built from the API's `DomainInfo`.
//! Only the fields rxen has are present.

use rxen_xend_api::DomainInfo;
use rxen_xlcfg::devices::{DiskAccess, DiskSpec, VifSpec};
use rxen_xlcfg::Action;
use serde_json::{json, Map, Value};

/// libxl's name of an `on_*` action (`libxl_action_on_shutdown`).
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Destroy => "destroy",
        Action::Restart => "restart",
        Action::Preserve => "preserve",
        Action::RenameRestart => "restart_rename",
    }
}

fn disk(d: &DiskSpec) -> Value {
    json!({
        "pdev_path": d.target,
        "vdev": d.vdev,
        // libxl_disk_backend: a block device is `phy`, an image file goes to `qdisk`.
        "backend": if d.backend_type == "phy" { "phy" } else { "qdisk" },
        "format": d.format.to_ascii_lowercase(),
        "readwrite": i32::from(d.access == DiskAccess::ReadWrite),
    })
}

fn nic(devid: usize, v: &VifSpec) -> Value {
    let mut m = Map::new();
    m.insert("devid".into(), json!(devid));
    let fields = [
        ("mac", &v.mac),
        ("bridge", &v.bridge),
        ("ip", &v.ip),
        ("ifname", &v.vifname),
        ("model", &v.model),
        ("script", &v.script),
    ];
    for (k, val) in fields {
        if let Some(val) = val {
            m.insert(k.into(), json!(val));
        }
    }
    m.insert("nictype".into(), json!("vif"));
    Value::Object(m)
}

/// One element of `xl list -l`'s array.
pub fn domain_config(d: &DomainInfo) -> Value {
    let spec = &d.config;
    let online: Vec<u32> = if d.vcpu_list.is_empty() {
        (0..d.vcpus).collect()
    } else {
        d.vcpu_list
            .iter()
            .filter(|v| v.online)
            .map(|v| v.id)
            .collect()
    };
    let mut b_info = Map::new();
    b_info.insert("max_vcpus".into(), json!(d.maxvcpus));
    b_info.insert("avail_vcpus".into(), json!(online));
    b_info.insert("max_memkb".into(), json!(d.maxmem_mib * 1024));
    b_info.insert("target_memkb".into(), json!(d.memory_mib * 1024));
    let mut pv = Map::new();
    if let Some(k) = &spec.kernel {
        b_info.insert("kernel".into(), json!(k));
        pv.insert("kernel".into(), json!(k));
    }
    if !spec.cmdline.is_empty() {
        b_info.insert("cmdline".into(), json!(spec.cmdline));
        pv.insert("cmdline".into(), json!(spec.cmdline));
    }
    b_info.insert("type.pv".into(), Value::Object(pv));
    json!({
        "domid": d.domid,
        "config": {
            "c_info": {
                "type": "pv",
                "name": d.name,
                "uuid": d.uuid,
            },
            "b_info": b_info,
            "disks": spec.disks.iter().map(disk).collect::<Vec<_>>(),
            "nics": spec.vifs.iter().enumerate().map(|(i, v)| nic(i, v)).collect::<Vec<_>>(),
            "on_poweroff": action_name(spec.on_poweroff),
            "on_reboot": action_name(spec.on_reboot),
            "on_crash": action_name(spec.on_crash),
        }
    })
}

/// `xl list -l`'s whole array.
pub fn domains_config(domains: &[DomainInfo]) -> Value {
    Value::Array(domains.iter().map(domain_config).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::domain;

    #[test]
    fn libxl_shape() {
        let v = domains_config(&[domain(Some(0), "Domain-0"), domain(Some(3), "web")]);
        let web = &v[1];
        assert_eq!(web["domid"], 3);
        let c = &web["config"];
        assert_eq!(c["c_info"]["type"], "pv");
        assert_eq!(c["c_info"]["name"], "web");
        assert_eq!(c["c_info"]["uuid"], "6c9b6a3e-1111-2222-3333-444455556666");
        assert_eq!(c["b_info"]["max_vcpus"], 2);
        assert_eq!(c["b_info"]["avail_vcpus"], json!([0]));
        assert_eq!(c["b_info"]["max_memkb"], 96 * 1024);
        assert_eq!(c["b_info"]["target_memkb"], 64 * 1024);
        assert_eq!(c["b_info"]["type.pv"]["kernel"], "/boot/guest.elf");
        assert_eq!(c["b_info"]["type.pv"]["cmdline"], "console=hvc0");
        assert_eq!(c["b_info"]["kernel"], "/boot/guest.elf");
        assert_eq!(
            c["disks"],
            json!([{"pdev_path": "/img/a.img", "vdev": "xvda", "backend": "qdisk", "format": "raw", "readwrite": 1}])
        );
        assert_eq!(
            c["nics"],
            json!([{"devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0", "nictype": "vif"}])
        );
        assert_eq!(c["on_poweroff"], "destroy");
        assert_eq!(c["on_reboot"], "restart_rename");
        assert_eq!(c["on_crash"], "destroy");
    }
}
