//! `xm console`: follows a domain's console output and sends what is typed to the
//! guest. On a terminal, stdin is put in raw mode (so keys reach the guest as typed)
//! and Ctrl-] detaches, as in xl; the terminal is restored on every way out (return,
//! error, panic, SIGTERM/SIGHUP/SIGQUIT). Otherwise stdin is sent line by line.
//!
//! xend serves the *tail* (at most 256 KiB, decoded lossily) of the console log, so
//! successive snapshots are matched against each other byte-wise ([`ConsoleTail`]):
//! nothing here slices text, so split multibyte characters cannot panic it, and a
//! sliding window keeps producing new output.
//!
//! Output goes through [`TerminalFilter`] (unless `--raw`), so the guest's control
//! sequences are shown, not acted on by the user's terminal.

use std::io::{IsTerminal, Read, Write};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use crate::client::Api;
use crate::error::{XmError, XmResult};
use crate::terminal_filter::TerminalFilter;

/// Ctrl-], the detach key.
pub const DETACH_KEY: u8 = 0x1d;
/// xend takes at most this many bytes of console input per request.
const MAX_INPUT: usize = 2048;
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();
/// Bytes of the previous snapshot's end looked for in the next one.
const ANCHOR: usize = 64;
/// Candidate positions checked fully before taking the latest one unverified.
const MAX_TRIES: usize = 64;

/// Length of `b` without an unfinished character at its end: a trailing
/// replacement character (a lossy decode of a partial character) or an incomplete
/// UTF-8 sequence. They are shown once more output follows them.
fn stable_len(b: &[u8]) -> usize {
    let mut end = b.len();
    // An incomplete multibyte sequence: a lead byte within the last 3 bytes whose
    // sequence runs past the end.
    for back in 1..=3.min(end) {
        let c = b[end - back];
        let need = match c {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            0x80..=0xBF => continue,
            _ => break,
        };
        if need > back {
            end -= back;
        }
        break;
    }
    while b[..end].ends_with(REPLACEMENT) {
        end -= REPLACEMENT.len();
    }
    end
}

/// Leading replacement characters (a character cut at the start of xend's window).
fn leading_replacements(b: &[u8]) -> usize {
    let mut n = 0;
    while b[n..].starts_with(REPLACEMENT) {
        n += REPLACEMENT.len();
    }
    n
}

/// Turns successive console snapshots into the new bytes each one adds.
#[derive(Default)]
pub struct ConsoleTail {
    /// The part of the last snapshot already shown.
    seen: Vec<u8>,
}

impl ConsoleTail {
    /// The bytes of `snapshot` not shown yet.
    pub fn update(&mut self, snapshot: &[u8]) -> Vec<u8> {
        let cur = &snapshot[..stable_len(snapshot)];
        let start = self.shown_up_to(cur);
        let new = cur[start..].to_vec();
        self.seen = cur.to_vec();
        new
    }

    /// Where in `cur` the already shown text ends.
    fn shown_up_to(&self, cur: &[u8]) -> usize {
        let prev = &self.seen;
        if cur.starts_with(prev) {
            return prev.len();
        }
        // The window slid: find the end of `prev` in `cur`, preferring the latest
        // place where everything before it in `cur` is the end of `prev`.
        let anchor = &prev[prev.len() - prev.len().min(ANCHOR)..];
        let mut first_hit = None;
        let mut tries = 0;
        for p in (anchor.len()..=cur.len()).rev() {
            if &cur[p - anchor.len()..p] != anchor {
                continue;
            }
            first_hit.get_or_insert(p);
            let skip = leading_replacements(&cur[..p]);
            if prev.ends_with(&cur[skip..p]) {
                return p;
            }
            tries += 1;
            if tries >= MAX_TRIES {
                break;
            }
        }
        // Nothing in common: a new console (the log was replaced); show all of it.
        first_hit.unwrap_or(0)
    }
}

/// Splits typed bytes into UTF-8 text for xend (which takes text), keeping a
/// character split across reads for the next read and dropping invalid bytes.
#[derive(Default)]
pub struct InputText {
    pending: Vec<u8>,
}

impl InputText {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // The first `good` bytes were just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or(""));
                    match e.error_len() {
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }
}

/// The terminal settings to put back, for the signal handler.
static SAVED_TERMIOS: OnceLock<libc::termios> = OnceLock::new();

extern "C" fn restore_and_reraise(sig: libc::c_int) {
    if let Some(t) = SAVED_TERMIOS.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `t` is a valid
        // termios that was read from this terminal.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t);
        }
    }
    // SAFETY: restores the default action and re-sends the signal to end as it would
    // have without the handler.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Stdin in raw mode while it lives.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> XmResult<RawMode> {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(XmError::io(
                "reading the terminal's settings",
                std::io::Error::last_os_error(),
            ));
        }
        let _ = SAVED_TERMIOS.set(saved);
        let handler = restore_and_reraise as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: installs a handler that only calls async-signal-safe functions.
            unsafe {
                libc::signal(sig, handler);
            }
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so the guest's "\n" still starts a new line.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: valid fd and termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(XmError::io(
                "setting the terminal to raw mode",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: puts back the settings read in `enter`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
        for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            // SAFETY: back to the default action.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Why the input side stopped.
enum InputEvent {
    Detach,
}

fn send_text(api: &Api, domain: &str, text: &str) {
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(MAX_INPUT);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Err(e) = api.console_input(domain, &rest.as_bytes()[..cut]) {
            eprint!("xm: {e}\r\n");
        }
        rest = &rest[cut..];
    }
}

/// Reads stdin and sends it to the guest until EOF or Ctrl-] (on a terminal).
fn input_loop(api: Api, domain: String, raw: bool, tx: mpsc::Sender<InputEvent>) {
    let mut stdin = std::io::stdin().lock();
    let mut text = InputText::default();
    let mut buf = [0u8; 1024];
    if !raw {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::BufRead::read_line(&mut stdin, &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => send_text(&api, &domain, &line),
            }
        }
    }
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let (typed, detach) = match chunk.iter().position(|&b| b == DETACH_KEY) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let t = text.push(typed);
        if !t.is_empty() {
            send_text(&api, &domain, &t);
        }
        if detach {
            let _ = tx.send(InputEvent::Detach);
            return;
        }
    }
}

/// Prints the console and follows it until the domain goes away or the user detaches.
/// `raw`: print the guest's bytes unfiltered.
pub fn follow(api: &Api, domain: &str, follow: bool, raw: bool) -> XmResult<()> {
    let (tx, rx) = mpsc::channel();
    let interactive = follow && std::io::stdin().is_terminal();
    let _raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    if follow {
        let (input_api, dom) = (api.clone(), domain.to_string());
        std::thread::spawn(move || input_loop(input_api, dom, interactive, tx));
    }
    let mut tail = ConsoleTail::default();
    let mut filter = TerminalFilter::default();
    let mut fetched = false;
    let mut out = std::io::stdout();
    loop {
        let snapshot = match api.console(domain) {
            Ok(s) => s,
            // The domain is gone after we followed it: done.
            Err(XmError::Api { status: 404, .. }) if fetched => return Ok(()),
            Err(e) => return Err(e),
        };
        fetched = true;
        let mut new = tail.update(&snapshot);
        if !raw {
            new = filter.push(&new);
        }
        if !new.is_empty() {
            out.write_all(&new)
                .and_then(|_| out.flush())
                .map_err(|e| XmError::io("writing the console", e))?;
        }
        if !follow {
            return Ok(());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(InputEvent::Detach) => return Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout | mpsc::RecvTimeoutError::Disconnected) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What xend serves after `n` bytes of `log`: the last `window` bytes, decoded
    /// lossily.
    fn served(log: &[u8], n: usize, window: usize) -> Vec<u8> {
        String::from_utf8_lossy(&log[n.saturating_sub(window)..n])
            .into_owned()
            .into_bytes()
    }

    fn replay(log: &[u8], steps: impl Iterator<Item = usize>, window: usize) -> Vec<u8> {
        let mut tail = ConsoleTail::default();
        let mut shown = Vec::new();
        for n in steps {
            shown.extend(tail.update(&served(log, n, window)));
        }
        shown
    }

    #[test]
    fn characters_split_across_snapshots_never_panic_and_come_out_whole() {
        // "a", then the first byte of a 4-byte character, then the rest.
        let log = "a😀x€é".as_bytes();
        let shown = replay(log, [1, 2, 3, 5, 6, 8, log.len()].into_iter(), 1 << 20);
        assert_eq!(String::from_utf8(shown).unwrap(), "a😀x€é");
        // Every cut point, one byte at a time.
        let log = "héllo wörld ✓ 😀 done\n".repeat(20);
        let shown = replay(log.as_bytes(), 0..=log.len(), 1 << 20);
        assert_eq!(String::from_utf8(shown).unwrap(), log);
    }

    #[test]
    fn a_sliding_window_keeps_producing_output() {
        // Numbered lines with multibyte text, a window much smaller than the log
        // (xend's is 256 KiB), snapshots at uneven steps that cut characters.
        let log: String = (0..4000)
            .map(|i| format!("line {i} — ünïcode ✓\n"))
            .collect();
        let window = 4096;
        let steps = (0..log.len()).step_by(997).chain([log.len()]);
        let shown = replay(log.as_bytes(), steps, window);
        assert_eq!(String::from_utf8_lossy(&shown), log);
    }

    #[test]
    fn a_replaced_log_is_shown_from_its_start() {
        let mut tail = ConsoleTail::default();
        assert_eq!(tail.update(b"old boot\n"), b"old boot\n");
        assert_eq!(tail.update(b"new\n"), b"new\n");
    }

    #[test]
    fn held_back_partial_characters() {
        assert_eq!(stable_len("ab\u{FFFD}".as_bytes()), 2);
        assert_eq!(stable_len(&[b'a', 0xF0, 0x9F]), 1);
        assert_eq!(stable_len(&[b'a', 0xC3]), 1);
        assert_eq!(stable_len("aé".as_bytes()), 3);
        assert_eq!(stable_len(b""), 0);
    }

    #[test]
    fn typed_multibyte_input_is_sent_whole() {
        let mut t = InputText::default();
        let e = "é".as_bytes();
        assert_eq!(t.push(&[b'a', e[0]]), "a");
        assert_eq!(t.push(&[e[1], b'b']), "éb");
        assert_eq!(t.push(&[0xFF, b'c']), "c");
    }
}
