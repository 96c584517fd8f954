//! Xen's `xl.cfg` domain configuration files: [`syntax`] parses the file into settings
//! (`key = value`, strings, numbers, lists, comments) with line and column in every
//! error; [`spec`] turns the settings into a validated [`DomainSpec`] (name, uuid,
//! memory, vCPUs, kernel, command line, lifecycle actions, disks, vifs), warning
//! about unknown keys.
//!
//! It owns only the file format and its validation; it must not start domains or know
//! about xend.

pub mod devices;
pub mod spec;
pub mod syntax;

pub use spec::{Action, DomainSpec, SpecError};
pub use syntax::{parse, ParseError, Setting, Value};
