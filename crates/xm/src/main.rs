//! `xm`: the command line of rxen, a client of xend's HTTP API, shaped after Xen's
//! `xl`/`xm`. It finds xend through `--url` or `XEND_URL` (default
//! `http://127.0.0.1:8000`; `unix:///path/to/socket` for xend's Unix socket).
//!
//! It owns argument parsing, the transport to xend and the output formats; it must
//! not hold domain state or talk to anything but xend's API.

mod client;
mod commands;
mod console;
mod error;
mod format;
mod libxl_json;
mod local_file;
mod size;
mod terminal_filter;
mod transport;
mod unix_http;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Api;
use crate::commands::Output;
use crate::error::XmResult;

#[derive(Parser)]
#[command(name = "xm", version, about = "Manage rxen domains through xend")]
struct Cli {
    /// xend's URL: http://HOST:PORT or unix:///path/to/socket.
    #[arg(
        long,
        env = "XEND_URL",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    url: String,
    /// Bearer token for a xend that requires one. Prefer --token-file or
    /// XEND_AUTH_TOKEN: a command line is visible to every user in `ps`.
    #[arg(long, env = "XEND_AUTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// File holding the bearer token (its first line, trimmed; at most 4 KiB).
    #[arg(long, value_name = "PATH", global = true, conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Machine-readable output: the API's JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create and start a domain from an xl.cfg file; `key=value` override settings.
    /// Relative paths in the file are resolved against the file's directory. The file
    /// must be a regular file of at most 1 MiB.
    Create {
        config: String,
        overrides: Vec<String>,
        /// Attach to the console afterwards.
        #[arg(short = 'c', long)]
        console: bool,
        /// Leave the domain paused (start it with `xm unpause`).
        #[arg(short = 'p', long)]
        paused: bool,
    },
    /// List domains, Domain-0 first (Name, ID, Mem, VCPUs, State, Time(s)).
    List {
        /// Long format: each domain's configuration as `xl list -l` prints it.
        #[arg(short, long)]
        long: bool,
        /// Domain names or ids (default: all).
        domains: Vec<String>,
    },
    /// Print the id of a domain.
    Domid { name: String },
    /// Print the name of a domain id.
    Domname { id: String },
    /// Host and xend information, as `xl info`'s `key : value` lines.
    Info,
    /// Stop a domain at once.
    Destroy { domain: String },
    /// Ask a domain (or all but Domain-0 with -a) to power off.
    Shutdown {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        domain: Option<String>,
        /// Every domain except Domain-0.
        #[arg(short, long)]
        all: bool,
        /// Wait until it is (they are all) gone.
        #[arg(short, long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Destroy what does not shut down in time.
        #[arg(long)]
        force: bool,
    },
    /// Ask a domain to reboot.
    Reboot { domain: String },
    /// Pause a domain.
    Pause { domain: String },
    /// Unpause a domain.
    Unpause { domain: String },
    /// Rename a domain.
    Rename { domain: String, new_name: String },
    /// Save a domain to FILE and destroy it (-c: keep it running). The image is
    /// Xen's migration stream v2 in xl's save format (Xen's verify-stream-v2
    /// accepts it); it holds the domain's memory, vCPUs and configuration. FILE is
    /// written by xend's host; a relative path is taken from the current directory.
    /// Disks and network interfaces are saved too (the guest keeps its connections).
    /// A guest that advertises control/feature-suspend is asked to suspend first
    /// (Xen's protocol, 60 s); others are saved without their cooperation.
    Save {
        /// Keep the domain running after the save (a checkpoint).
        #[arg(short = 'c', long)]
        checkpoint: bool,
        domain: String,
        file: String,
    },
    /// Restore a domain saved with `xm save`: a new domain id, the same name, UUID
    /// and configuration; the guest goes on where it was saved. A file that is not
    /// a complete, valid image is refused and nothing is created.
    Restore {
        /// Leave the restored domain paused (start it with `xm unpause`).
        #[arg(short = 'p', long)]
        paused: bool,
        file: String,
    },
    /// Migrate a domain to another host's xend (its relocation server, Xen's port
    /// 8002 unless HOST:PORT says otherwise). Both xends need the same relocation
    /// token (xend --relocation-token-file); the target's needs --relocation-port.
    /// With --live the domain keeps running while its memory is copied in rounds
    /// (pages it writes meanwhile are sent again), then pauses for the last pages;
    /// without, it is paused first. It is destroyed here only once it runs at the
    /// target; a refusal or failure leaves it running here. Prints the rounds, pages
    /// and downtime. Disks and vifs stay connected: disks must be at the same path
    /// on the target (shared storage); vifs get a TAP there (vif<domid>.<devid>
    /// unless vifname= is set, which is refused when that name exists at the target).
    Migrate {
        /// Copy memory while the domain runs (pre-copy), pausing it only at the end.
        #[arg(short = 'l', long)]
        live: bool,
        domain: String,
        /// The target: HOST or HOST:PORT ([V6]:PORT for IPv6).
        target: String,
    },
    /// Print a domain's console and follow it until the domain ends. On a terminal,
    /// keys go to the guest as typed and Ctrl-] detaches; otherwise lines read from
    /// stdin go to the guest. Terminal controls in the guest's output (escape
    /// sequences, C0/C1 controls but newline, return, tab, backspace) are shown as
    /// visible text (`^[`, `M-^[`), as `cat -v` does, so a guest cannot drive your
    /// terminal (clear it, set its clipboard, ...).
    Console {
        domain: String,
        /// Print what there is and return.
        #[arg(long)]
        no_follow: bool,
        /// Pass the guest's output to the terminal unchanged (colours, cursor
        /// movement; also anything else the guest sends). Only for trusted guests.
        #[arg(long)]
        raw: bool,
    },
    /// Set the number of online vCPUs (up to maxvcpus).
    VcpuSet { domain: String, count: u32 },
    /// List vCPUs (Name, ID, VCPU, CPU, State, Time(s), Affinity (Hard / Soft)).
    VcpuList { domains: Vec<String> },
    /// Set a domain's memory target.
    #[command(after_help = size::SIZE_HELP)]
    MemSet {
        domain: String,
        /// Size, e.g. 256, 256m, 1g, 262144k.
        size: String,
    },
    /// Set a domain's maximum memory.
    #[command(after_help = size::SIZE_HELP)]
    MemMax {
        domain: String,
        /// Size, e.g. 256, 256m, 1g, 262144k.
        size: String,
    },
    /// Uptime of domains (Name, ID, Uptime).
    Uptime { domains: Vec<String> },
    /// xend's log.
    Dmesg,
    /// Add a managed domain (config kept by xend; not started). The file must be a
    /// regular file of at most 1 MiB.
    New {
        config: String,
        overrides: Vec<String>,
    },
    /// Start a managed domain.
    Start { name: String },
    /// Remove a managed domain's config.
    Delete { name: String },
    /// Hot-plug a disk into a running domain, in xl's disk syntax: `xm block-attach
    /// web 'file:/srv/data.img,xvdb,w'`, `'phy:/dev/vg/data,xvdc,r'`, or key=value
    /// parts (`vdev=xvdb access=w target=/srv/data.img`; target last). Several
    /// arguments are joined with commas. A disk another running domain uses is
    /// refused unless both uses are read-only (`r`).
    #[command(name = "block-attach")]
    BlockAttach {
        domain: String,
        #[arg(required = true, num_args = 1..)]
        disk: Vec<String>,
    },
    /// Remove a disk from a running domain: the guest is asked to close it (Xen's
    /// Closing handshake) and has --timeout seconds; a guest that does not answer
    /// has its ring cut and the device removed anyway (a warning says so).
    #[command(name = "block-detach")]
    BlockDetach {
        domain: String,
        /// The disk: its virtual device (xvdb) or device number (51728).
        dev: String,
        /// Do not wait for the guest.
        #[arg(short, long)]
        force: bool,
        /// Seconds the guest has to close the device (default 10, at most 600).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// List a domain's disks as `xl block-list` (Vdev BE handle state evt-ch ring-ref
    /// BE-path: device number, backend domain, frontend domain, the frontend's xenbus
    /// state, event channel and ring reference, and the backend's xenstore path).
    #[command(name = "block-list")]
    BlockList {
        #[arg(required = true, num_args = 1..)]
        domains: Vec<String>,
    },
    /// Hot-plug a network interface into a running domain, in xl's vif syntax:
    /// `xm network-attach web bridge=xenbr0 mac=00:16:3e:12:34:56`. Keys: mac (default:
    /// random in Xen's 00:16:3e range), bridge (default xenbr0; created by xend if
    /// missing unless it runs with --no-bridge-create), script (vif-bridge, the
    /// default, or vif-route with ip=A.B.C.D: a host route to the guest's address
    /// through the TAP, proxy ARP and forwarding; vif-nat is not supported), ip,
    /// vifname (the host TAP's name, default vif<domid>.<devid>), model (accepted, not
    /// applied), devid (default: one past the highest). See docs/networking.md.
    #[command(name = "network-attach")]
    NetworkAttach {
        domain: String,
        /// key=value items (joined with commas).
        #[arg(num_args = 0..)]
        nic: Vec<String>,
    },
    /// Remove a network interface from a running domain: the guest is asked to close
    /// it (Xen's Closing handshake) and has --timeout seconds, else its rings are cut
    /// (a warning says so); then the TAP (with its routes or bridge port) and the
    /// xenstore nodes go.
    #[command(name = "network-detach")]
    NetworkDetach {
        domain: String,
        /// The vif: its device number (Idx of network-list) or MAC address.
        dev: String,
        /// Do not wait for the guest (a frontend that never connected, a hung guest).
        #[arg(short, long)]
        force: bool,
        /// Seconds the guest has to close the vif (default 10, at most 600).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// List a domain's network interfaces as `xl network-list` (Idx BE Mac Addr.
    /// handle state evt-ch tx-/rx-ring-ref BE-path: device number, backend domain,
    /// MAC, handle, the frontend's xenbus state, event channel and ring references,
    /// and the backend's xenstore path).
    #[command(name = "network-list")]
    NetworkList {
        #[arg(required = true, num_args = 1..)]
        domains: Vec<String>,
    },
    /// Follow domain state changes.
    Events,
    /// A live table of domains, refreshed every second.
    Top {
        /// Stop after this many refreshes.
        #[arg(long)]
        iterations: Option<u64>,
    },
}

fn run(cli: Cli) -> XmResult<()> {
    let token = match &cli.token_file {
        Some(p) => Some(local_file::read_token(p)?),
        None => cli.token.clone(),
    };
    let api = Api::new(&cli.url, token)?;
    let out = Output { json: cli.json };
    match cli.cmd {
        Cmd::Create {
            config,
            overrides,
            console,
            paused,
        } => commands::create(&api, out, &config, &overrides, paused, console),
        Cmd::List { long, domains } => commands::list(&api, out, long, &domains),
        Cmd::Domid { name } => commands::domid(&api, &name),
        Cmd::Domname { id } => commands::domname(&api, &id),
        Cmd::Info => commands::info(&api, out),
        Cmd::Destroy { domain } => api.destroy(&domain),
        Cmd::Shutdown {
            domain,
            all,
            wait,
            timeout,
            force,
        } => commands::shutdown(&api, domain.as_deref(), all, wait, timeout, force),
        Cmd::Reboot { domain } => api.reboot(&domain),
        Cmd::Pause { domain } => api.pause(&domain, true),
        Cmd::Unpause { domain } => api.pause(&domain, false),
        Cmd::Rename { domain, new_name } => api.rename(&domain, &new_name),
        Cmd::Save {
            checkpoint,
            domain,
            file,
        } => commands::save(&api, out, &domain, &file, checkpoint),
        Cmd::Restore { paused, file } => commands::restore(&api, out, &file, paused),
        Cmd::Migrate {
            live,
            domain,
            target,
        } => commands::migrate(&api, out, &domain, &target, live),
        Cmd::Console {
            domain,
            no_follow,
            raw,
        } => console::follow(&api, &domain, !no_follow, raw),
        Cmd::VcpuSet { domain, count } => api.vcpu_set(&domain, count),
        Cmd::VcpuList { domains } => commands::vcpu_list(&api, out, &domains),
        Cmd::MemSet { domain, size } => commands::mem(&api, &domain, &size, false),
        Cmd::MemMax { domain, size } => commands::mem(&api, &domain, &size, true),
        Cmd::Uptime { domains } => commands::uptime(&api, out, &domains),
        Cmd::Dmesg => commands::dmesg(&api),
        Cmd::New { config, overrides } => commands::new_managed(&api, out, &config, &overrides),
        Cmd::Start { name } => commands::start(&api, out, &name),
        Cmd::Delete { name } => api.delete_managed(&name),
        Cmd::BlockAttach { domain, disk } => commands::block_attach(&api, out, &domain, &disk),
        Cmd::BlockDetach {
            domain,
            dev,
            force,
            timeout,
        } => commands::block_detach(&api, out, &domain, &dev, force, timeout),
        Cmd::BlockList { domains } => commands::block_list(&api, out, &domains),
        Cmd::NetworkAttach { domain, nic } => commands::network_attach(&api, out, &domain, &nic),
        Cmd::NetworkDetach {
            domain,
            dev,
            force,
            timeout,
        } => commands::network_detach(&api, out, &domain, &dev, force, timeout),
        Cmd::NetworkList { domains } => commands::network_list(&api, out, &domains),
        Cmd::Events => commands::events(&api, out),
        Cmd::Top { iterations } => commands::top(&api, iterations),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xm: {e}");
            ExitCode::FAILURE
        }
    }
}
