//! `XS_CONTROL`, formerly `XS_DEBUG` (the same message type, 0), domain 0 only as in
//! Xen: `check` (consistency), `print` (logs its text, as Xen's `do_control_print`),
//! `quota` (limits and nodes per domain), `stats` (counters), `help`. Unknown commands
//! are `EINVAL`, as in Xen.
//!
//! Domain connections get `EACCES` (the table's `PRIV` flag; Xen checks the same in
//! `wire_funcs[]` and in `do_control`): Mini-OS's xenbus test sends `DEBUG print` from
//! its domain and waits for that error reply.

use super::{ok, str_arg, Request, Store};
use crate::wire::{XsError, PAYLOAD_MAX};

pub(super) fn control(s: &mut Store, r: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    let cmd = r
        .fields
        .first()
        .map(|c| str_arg(c))
        .transpose()?
        .unwrap_or("help");
    let text = match cmd {
        "check" => s.check_consistency(),
        "quota" => quota(s),
        "print" => return print(r),
        "stats" => stats(s),
        "help" => "commands: check (consistency check), print <text> (log it), quota (limits and usage), stats (counters), help\n".to_string(),
        _ => return Err(XsError::EINVAL),
    };
    let mut v = text.into_bytes();
    v.truncate(PAYLOAD_MAX - 1);
    v.push(0);
    Ok(v)
}

/// `print <text>`: one argument, logged; the reply is `OK` (Xen: `EINVAL` unless
/// there is exactly one argument).
fn print(r: &Request<'_>) -> Result<Vec<u8>, XsError> {
    let [_, text] = r.fields[..] else {
        return Err(XsError::EINVAL);
    };
    let text = String::from_utf8_lossy(text);
    tracing::info!(conn = r.id, domid = r.domid, text = %text.escape_debug(), "control: print");
    Ok(ok())
}

fn quota(s: &Store) -> String {
    let q = &s.quota;
    let mut text = format!(
        "limits: nodes={} node_size={} watches={} transactions={} transaction_nodes={} perms={}\n",
        q.nodes, q.node_size, q.watches, q.transactions, q.transaction_nodes, q.perms
    );
    let mut owned: Vec<_> = s.owned.iter().filter(|(_, n)| **n > 0).collect();
    owned.sort();
    for (d, n) in owned {
        text.push_str(&format!("domain {d}: nodes={n}\n"));
    }
    text
}

fn stats(s: &Store) -> String {
    format!(
        "nodes={} connections={} domains={} watches={} requests={} errors={} watch_events={} conflicts={} transactions={}\n",
        s.nodes.len(),
        s.conns.len(),
        s.domains.len(),
        s.watch_count(),
        s.stats.requests,
        s.stats.errors,
        s.stats.watch_events,
        s.stats.conflicts,
        s.transaction_count()
    )
}
