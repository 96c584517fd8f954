//! Human output in xl's shapes: `xl list`, `xl vcpu-list`, `xl info`, `xl uptime`.
//! Pure functions from API types to text.

use std::fmt::Write;

use rxen_xend_api::{DomainInfo, HostInfo, UptimeReply, VcpuInfo};

/// Sort key: Domain-0 first, then domains by id, then halted managed domains by name.
pub fn domain_order(d: &DomainInfo) -> (bool, bool, Option<u32>, String) {
    (!d.is_dom0(), d.domid.is_none(), d.domid, d.name.clone())
}

fn id_text(domid: Option<u32>) -> String {
    domid.map_or_else(|| "-".into(), |i| i.to_string())
}

/// `xl list`: `Name ID Mem VCPUs State Time(s)`.
pub fn list_table(domains: &[DomainInfo]) -> String {
    let mut out = format!(
        "{:<40} {:>5} {:>5} {:>5}\tState\tTime(s)\n",
        "Name", "ID", "Mem", "VCPUs"
    );
    for d in domains {
        let _ = writeln!(
            out,
            "{:<40} {:>5} {:>5} {:>5}     {:<6}  {:>8.1}",
            d.name,
            id_text(d.domid),
            d.memory_mib,
            d.vcpus,
            d.state_flags,
            d.cpu_time_s
        );
    }
    out
}

/// xl's state column of one vCPU: running, blocked, offline (`p`).
fn vcpu_state(v: &VcpuInfo) -> String {
    if !v.online {
        return "--p".into();
    }
    format!(
        "{}{}-",
        if v.state.contains('r') { 'r' } else { '-' },
        if v.state.contains('b') { 'b' } else { '-' }
    )
}

/// `xl vcpu-list`: `Name ID VCPU CPU State Time(s) Affinity (Hard / Soft)`.
pub fn vcpu_table(domains: &[DomainInfo]) -> String {
    let mut out = format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} Affinity (Hard / Soft)\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)"
    );
    for d in domains {
        for v in &d.vcpu_list {
            let cpu = match (v.online, v.host_cpu) {
                (true, Some(c)) => c.to_string(),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9.1}  {} / all",
                d.name,
                id_text(d.domid),
                v.id,
                cpu,
                vcpu_state(v),
                v.cpu_time_s,
                v.affinity
            );
        }
    }
    out
}

/// `xl info`: `key : value` lines in xl's order (xl's keys first, then rxen's).
pub fn info_lines(h: &HostInfo) -> String {
    let rows: Vec<(&str, String)> = vec![
        ("host", h.host.clone()),
        ("release", h.release.clone()),
        ("version", h.version.clone()),
        ("machine", h.machine.clone()),
        ("nr_cpus", h.nr_cpus.to_string()),
        ("max_cpu_id", h.max_cpu_id.to_string()),
        ("nr_nodes", h.nr_nodes.to_string()),
        ("cores_per_socket", h.cores_per_socket.to_string()),
        ("threads_per_core", h.threads_per_core.to_string()),
        ("cpu_mhz", h.cpu_mhz.to_string()),
        ("virt_caps", h.virt_caps.clone()),
        ("total_memory", h.total_memory.to_string()),
        ("free_memory", h.free_memory.to_string()),
        ("xen_major", h.xen_major.to_string()),
        ("xen_minor", h.xen_minor.to_string()),
        ("xen_extra", h.xen_extra.clone()),
        ("xen_version", h.xen_version.clone()),
        ("xen_caps", h.xen_caps.clone()),
        ("xen_scheduler", h.xen_scheduler.clone()),
        ("xen_pagesize", h.xen_pagesize.to_string()),
        ("xend_version", h.xend_version.clone()),
        ("domains", h.domains.to_string()),
        ("domain_memory", h.domain_memory_mib.to_string()),
        ("xend_config_format", "4".into()),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<23}: {v}");
    }
    out
}

/// xl's uptime text: `H:MM:SS`, with `N day(s), ` in front past a day.
pub fn uptime_text(seconds: f64) -> String {
    let t = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (days, h, m, s) = (t / 86400, t / 3600 % 24, t / 60 % 60, t % 60);
    match days {
        0 => format!("{h:2}:{m:02}:{s:02}"),
        1 => format!("1 day, {h:2}:{m:02}:{s:02}"),
        d => format!("{d} days, {h:2}:{m:02}:{s:02}"),
    }
}

/// `xl uptime`: `Name ID Uptime`.
pub fn uptime_table(rows: &[UptimeReply]) -> String {
    let mut out = format!("{:<33} {:>4} Uptime\n", "Name", "ID");
    for r in rows {
        let _ = writeln!(
            out,
            "{:<33} {:>4} {}",
            r.name,
            id_text(r.domid),
            r.uptime_s.map_or_else(|| "-".into(), uptime_text)
        );
    }
    out
}

/// `xl block-list`'s table: Vdev BE handle state evt-ch ring-ref BE-path (the
/// frontend's state, event channel and ring reference; -1 where the frontend has not
/// published one).
pub fn block_table(disks: &[rxen_xend_api::DiskInfo]) -> String {
    let n = |v: Option<u32>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {}\n",
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path"
    );
    for d in disks {
        let _ = writeln!(
            out,
            "{:<5} {:<3} {:<6} {:<5} {:<6} {:<8} {}",
            d.devid,
            d.backend_id,
            d.frontend_id,
            n(d.frontend_state),
            n(d.evtchn),
            n(d.ring_ref),
            d.backend_path
        );
    }
    out
}

/// `xl network-list`'s table: Idx BE Mac Addr. handle state evt-ch
/// tx-/rx-ring-ref BE-path (handle is the device number, as xl's; -1 where the
/// frontend has not published a value).
pub fn network_table(nics: &[rxen_xend_api::NicInfo]) -> String {
    let n = |v: Option<u32>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
    let mut out = format!(
        "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<11} {}\n",
        "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path"
    );
    for d in nics {
        let _ = writeln!(
            out,
            "{:<3} {:<2} {:<17} {:<6} {:<5} {:<6} {:>5}/{:<11} {}",
            d.devid,
            d.backend_id,
            d.mac,
            d.devid,
            n(d.frontend_state),
            n(d.evtchn),
            n(d.tx_ring_ref),
            n(d.rx_ring_ref),
            d.backend_path
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn network_list_has_xls_columns() {
        let n = rxen_xend_api::NicInfo {
            devid: 0,
            mac: "00:16:3e:01:02:03".into(),
            mode: "bridge".into(),
            bridge: Some("xenbr0".into()),
            ip: None,
            vifname: "vif3.0".into(),
            backend_id: 0,
            frontend_id: 3,
            frontend_state: Some(4),
            backend_state: Some(4),
            evtchn: Some(9),
            tx_ring_ref: Some(768),
            rx_ring_ref: Some(769),
            backend_path: "/local/domain/0/backend/vif/3/0".into(),
        };
        let mut unconnected = n.clone();
        unconnected.devid = 1;
        unconnected.backend_path = "/local/domain/0/backend/vif/3/1".into();
        (
            unconnected.frontend_state,
            unconnected.evtchn,
            unconnected.tx_ring_ref,
            unconnected.rx_ring_ref,
        ) = (Some(1), None, None, None);
        assert_eq!(
            network_table(&[n, unconnected]),
            "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path\n\
             0   0  00:16:3e:01:02:03 0      4     9        768/769         /local/domain/0/backend/vif/3/0\n\
             1   0  00:16:3e:01:02:03 1      1     -1        -1/-1          /local/domain/0/backend/vif/3/1\n"
        );
    }

    #[test]
    fn block_list_has_xls_columns() {
        let d = rxen_xend_api::DiskInfo {
            vdev: "xvda".into(),
            devid: 51712,
            target: "/img/a.img".into(),
            backend_type: "file".into(),
            mode: "w".into(),
            backend_id: 0,
            frontend_id: 3,
            frontend_state: Some(4),
            backend_state: Some(4),
            evtchn: Some(10),
            ring_ref: Some(8),
            backend_path: "/local/domain/0/backend/vbd/3/51712".into(),
        };
        let mut unconnected = d.clone();
        (
            unconnected.frontend_state,
            unconnected.evtchn,
            unconnected.ring_ref,
        ) = (Some(1), None, None);
        assert_eq!(
            block_table(&[d, unconnected]),
            "Vdev  BE  handle state evt-ch ring-ref BE-path\n\
             51712 0   3      4     10     8        /local/domain/0/backend/vbd/3/51712\n\
             51712 0   3      1     -1     -1       /local/domain/0/backend/vbd/3/51712\n"
        );
    }
    use rxen_xend_api::DomainState;

    pub(crate) fn domain(domid: Option<u32>, name: &str) -> DomainInfo {
        let spec: rxen_xlcfg::DomainSpec = serde_json::from_value(serde_json::json!({
            "name": name, "memory": 64, "vcpus": 1, "maxvcpus": 2, "kernel": "/boot/guest.elf",
            "cmdline": "console=hvc0",
            "disks": [{"target": "/img/a.img", "format": "raw", "vdev": "xvda", "access": "ReadWrite", "backend_type": "file"}],
            "vifs": [{"mac": "00:16:3e:00:00:01", "bridge": "xenbr0"}],
            "on_reboot": "rename-restart"
        }))
        .expect("spec");
        DomainInfo {
            domid,
            name: name.into(),
            uuid: "6c9b6a3e-1111-2222-3333-444455556666".into(),
            state: DomainState::Running,
            state_flags: "-b----".into(),
            memory_mib: 64,
            maxmem_mib: 96,
            vcpus: 1,
            maxvcpus: 2,
            uptime_s: Some(12.0),
            cpu_time_s: 1.25,
            vcpu_list: vec![
                VcpuInfo {
                    id: 0,
                    online: true,
                    state: "b".into(),
                    cpu_time_s: 1.25,
                    host_cpu: Some(1),
                    affinity: "all".into(),
                },
                VcpuInfo {
                    id: 1,
                    online: false,
                    state: "-".into(),
                    cpu_time_s: 0.0,
                    host_cpu: None,
                    affinity: "all".into(),
                },
            ],
            hypercalls: 0,
            managed: false,
            pid: Some(42),
            start_time: Some(1_700_000_000.0),
            exit_reason: None,
            unresponsive: false,
            console_dropped_bytes: 0,
            config: spec,
        }
    }

    #[test]
    fn list_puts_domain0_first_in_xl_columns() {
        let mut doms = vec![
            domain(Some(7), "web"),
            domain(None, "halted"),
            domain(Some(0), "Domain-0"),
            domain(Some(3), "db"),
        ];
        doms.sort_by_key(domain_order);
        let names: Vec<_> = doms.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["Domain-0", "db", "web", "halted"]);
        let t = list_table(&doms);
        let lines: Vec<_> = t.lines().collect();
        let head: Vec<_> = lines[0].split_whitespace().collect();
        assert_eq!(head, ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]);
        let row: Vec<_> = lines[1].split_whitespace().collect();
        assert_eq!(row, ["Domain-0", "0", "64", "1", "-b----", "1.2"]);
        assert_eq!(lines[4].split_whitespace().nth(1), Some("-"));
        // Columns line up as xl's: ID ends at column 46.
        assert_eq!(lines[1].find(" 0 ").map(|i| i + 2), Some(46));
    }

    #[test]
    fn vcpu_list_has_xl_columns() {
        let t = vcpu_table(&[domain(Some(3), "web")]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity", "(Hard", "/", "Soft)"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["web", "3", "0", "1", "-b-", "1.2", "all", "/", "all"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["web", "3", "1", "-", "--p", "0.0", "all", "/", "all"]
        );
    }

    #[test]
    fn uptime_reads_as_xl() {
        assert_eq!(uptime_text(65.9), " 0:01:05");
        assert_eq!(uptime_text(90061.0), "1 day,  1:01:01");
        assert_eq!(uptime_text(2.0 * 86400.0), "2 days,  0:00:00");
        assert_eq!(uptime_text(f64::NAN), " 0:00:00");
    }
}
