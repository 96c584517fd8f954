//! What can go wrong in a domain operation. `api.rs` maps each kind to an HTTP status;
//! nothing here knows about HTTP.

use rxen_xend_api::DomainState;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainError {
    #[error("no domain {0}")]
    NotFound(String),
    #[error("no managed domain {0}")]
    NoManaged(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("a domain named {0:?} exists")]
    NameInUse(String),
    #[error("a domain with UUID {0} exists")]
    UuidInUse(String),
    #[error("domain is {0}")]
    WrongState(DomainState),
    #[error("{0}")]
    Refused(String),
    #[error("Domain-0 is the host: it cannot be {0}")]
    Dom0(&'static str),
    #[error("not enough host memory: {0}")]
    InsufficientMemory(String),
    #[error("no free domain id")]
    NoFreeDomid,
    #[error("xenstore: {0}")]
    Xenstore(String),
    /// The VMM refused the domain (bad image, sizes): the client's config is at fault.
    #[error("xen-vmm could not build the domain: {0}")]
    BuildFailed(String),
    /// A disk another domain uses, where either may write.
    #[error("{0}")]
    DiskInUse(String),
    /// The domain already has a disk on that virtual device.
    #[error("{0}")]
    DeviceInUse(String),
    /// The domain has no such disk.
    #[error("{0}")]
    NoDevice(String),
    /// The VMM refused a device (it cannot open the disk, ...).
    #[error("{0}")]
    DeviceRefused(String),
    /// A file given to restore is not a usable saved image.
    #[error("not a restorable image: {0}")]
    BadImage(String),
    /// The VMM could not save the domain (it keeps running as it was).
    #[error("save failed: {0}")]
    SaveFailed(String),
    /// A migration did not complete (the domain runs on here).
    #[error("migration failed: {0}")]
    MigrateFailed(String),
    #[error("the guest did not shut down in time (use force to destroy it)")]
    ShutdownTimeout,
    #[error("{0}")]
    Internal(String),
}

pub type DomainResult<T> = Result<T, DomainError>;

/// `map_err` helper: an internal failure with context.
pub fn internal<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> DomainError {
    move |e| DomainError::Internal(format!("{what}: {e}"))
}

/// `map_err` helper: xenstored failed or is unreachable.
pub fn xenstore<E: std::fmt::Display>(e: E) -> DomainError {
    DomainError::Xenstore(e.to_string())
}
