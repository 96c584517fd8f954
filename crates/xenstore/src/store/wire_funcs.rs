//! The table of message types, modelled on `wire_funcs[]` of Xen's xenstored
//! (`tools/xenstored/core.c`): for each type its handler and flags. [`Store::handle`]
//! looks a request up here and applies the flags before calling the handler.
//!
//! Flags as Xen's: [`NOTID`] (`XS_FLAG_NOTID`: the transaction id is ignored, never
//! looked up) and [`PRIV`] (`XS_FLAG_PRIV`: domain 0 only, `EACCES` for others). rxen
//! adds [`TX`]: the handler works inside the request's transaction (the others only
//! have a transaction id checked, as Xen does, and do not use it).
//!
//! Deliberate differences from Xen, kept for compatibility with rxen's clients:
//! `IS_DOMAIN_INTRODUCED` is not privileged here (Xen: `XS_FLAG_PRIV`);
//! `TRANSACTION_START` never looks its id up (a non-zero id is `EBUSY`, Xen looks it up
//! first); unknown types and the reply-only types (`WATCH_EVENT`, `ERROR`) get
//! `EINVAL` (Xen: `ENOSYS`).

use super::{control, domains, transactions, tree, watches, Request, Store};
use crate::wire::{MsgType, XsError};

/// Ignore the transaction id (Xen's `XS_FLAG_NOTID`).
pub(super) const NOTID: u32 = 1 << 0;
/// Domain 0 only (Xen's `XS_FLAG_PRIV`).
pub(super) const PRIV: u32 = 1 << 1;
/// Runs inside the request's transaction (reads and writes go to it).
pub(super) const TX: u32 = 1 << 2;

/// A request handler: the reply payload, or the error to send.
pub(super) type Handler = fn(&mut Store, &mut Request<'_>) -> Result<Vec<u8>, XsError>;

/// What the store does with one message type.
pub(super) struct WireFunc {
    /// `None` for types only xenstored sends.
    pub handler: Option<Handler>,
    pub flags: u32,
}

impl WireFunc {
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

const fn f(handler: Handler, flags: u32) -> WireFunc {
    WireFunc {
        handler: Some(handler),
        flags,
    }
}

/// Requests of types that only xenstored sends.
const REPLY_ONLY: WireFunc = WireFunc {
    handler: None,
    flags: 0,
};

/// The entry of message type `t`.
pub(super) fn wire_func(t: MsgType) -> WireFunc {
    use MsgType::*;
    match t {
        Control => f(control::control, PRIV),
        Directory => f(tree::directory, TX),
        Read => f(tree::read, TX),
        GetPerms => f(tree::get_perms, TX),
        Watch => f(watches::watch, NOTID),
        Unwatch => f(watches::unwatch, NOTID),
        TransactionStart => f(transactions::start, NOTID),
        TransactionEnd => f(transactions::end, TX),
        Introduce => f(domains::introduce, PRIV),
        Release => f(domains::release, PRIV),
        GetDomainPath => f(domains::get_domain_path, 0),
        Write => f(tree::write, TX),
        Mkdir => f(tree::mkdir, TX),
        Rm => f(tree::rm, TX),
        SetPerms => f(tree::set_perms, TX),
        WatchEvent | Error => REPLY_ONLY,
        IsDomainIntroduced => f(domains::is_domain_introduced, 0),
        Resume => f(domains::resume, PRIV),
        SetTarget => f(domains::set_target, PRIV),
        // Also ends every transaction of the connection, the request's own included.
        ResetWatches => f(watches::reset_watches, TX),
        DirectoryPart => f(tree::directory_part, TX),
        GetFeature | SetFeature | GetQuota | SetQuota => f(not_implemented, 0),
    }
}

fn not_implemented(_: &mut Store, _: &mut Request<'_>) -> Result<Vec<u8>, XsError> {
    Err(XsError::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_xen() {
        for t in MsgType::ALL {
            let w = wire_func(t);
            let notid = matches!(
                t,
                MsgType::Watch | MsgType::Unwatch | MsgType::TransactionStart
            );
            assert_eq!(w.has(NOTID), notid, "{t:?} NOTID");
            let privileged = matches!(
                t,
                MsgType::Control
                    | MsgType::Introduce
                    | MsgType::Release
                    | MsgType::Resume
                    | MsgType::SetTarget
            );
            assert_eq!(w.has(PRIV), privileged, "{t:?} PRIV");
            assert!(!(w.has(NOTID) && w.has(TX)), "{t:?}: TX needs the id");
            assert_eq!(
                w.handler.is_none(),
                matches!(t, MsgType::WatchEvent | MsgType::Error)
            );
        }
    }
}
