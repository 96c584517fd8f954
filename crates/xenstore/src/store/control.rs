//! `XS_CONTROL` (domain 0 only): `check` (consistency), `quota` (limits and nodes per
//! domain), `stats` (counters), `help`.

use super::{str_arg, Request, Store};
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
        "stats" => stats(s),
        "help" => "commands: check (consistency check), quota (limits and usage), stats (counters), help\n".to_string(),
        _ => return Err(XsError::EINVAL),
    };
    let mut v = text.into_bytes();
    v.truncate(PAYLOAD_MAX - 1);
    v.push(0);
    Ok(v)
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
