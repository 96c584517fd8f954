//! Hypercalls: [`decode`] turns registers and guest memory into a typed operation;
//! [`handle`] executes it for a vCPU and returns the value for `rax`.

pub mod decode;
mod exec;

use kvm_ioctls::VcpuFd;

use crate::domain::DomainShared;
pub use decode::{HypercallArgs, Op};
pub use exec::{feature_submap, XEN_MAJOR, XEN_MINOR};

/// Handles one hypercall of vCPU `vcpu`; returns the guest's `rax`.
pub fn handle(dom: &DomainShared, vcpu: u32, fd: &VcpuFd, call: HypercallArgs) -> i64 {
    if let Some(v) = dom.vcpus.get(vcpu as usize) {
        v.hypercalls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    dom.stats.hypercall(call.nr, call.args[0]);
    let mem = dom.guest_view(vcpu);
    let rc = if let Some(rc) = crate::traps::hypercall::handle(&dom.traps, &mem, vcpu, &call) {
        rc
    } else if let Some(rc) = crate::pv::hypercall::handle(dom, vcpu, fd, &mem, &call) {
        rc
    } else {
        match decode::decode(call, &mem) {
            Ok(op) => exec::execute(dom, vcpu, &mem, op),
            Err(e) => e as i64,
        }
    };
    tracing::trace!(
        vcpu,
        nr = call.nr,
        name = rxen_abi::hypercall::name(call.nr as u32),
        args = format_args!("{:x?}", call.args),
        rc,
        "hypercall"
    );
    rc
}
