//! Makes guest console output safe to print on the user's terminal.
//!
//! A guest controls every byte of its console, so printed as is it could drive the
//! user's terminal: clear the screen (`ESC [ 2 J`), retitle the window, write the
//! clipboard (OSC 52), answer-back queries that inject input, and so on. Before
//! printing, [`TerminalFilter`] shows every control a terminal would act on in a
//! visible form, as `cat -v` does:
//!
//! * C0 controls other than `\n`, `\r`, `\t` and backspace become `^@`..`^_`
//!   (ESC is `^[`, BEL `^G`), and DEL becomes `^?`. Since ESC itself is shown, no
//!   escape sequence (CSI, OSC, DCS, APC, ...) reaches the terminal: its remaining
//!   bytes are plain text.
//! * C1 controls (U+0080..U+009F, UTF-8 `C2 80`..`C2 9F`) become `M-^@`..`M-^_`.
//! * Bytes that are not UTF-8 become U+FFFD.
//!
//! Everything else (printable ASCII, UTF-8 text) passes unchanged. A character split
//! across two chunks is held back until its end arrives. `xm console --raw` skips
//! this filter for users who want their guest's colours.

/// The state of the filter between chunks: an unfinished UTF-8 character.
#[derive(Default)]
pub struct TerminalFilter {
    pending: Vec<u8>,
}

/// Bytes of the UTF-8 character that starts with `lead`, or `None` if `lead`
/// cannot start one.
fn utf8_len(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7F => Some(1),
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

const REPLACEMENT: &str = "\u{FFFD}";

fn push_c0(out: &mut Vec<u8>, b: u8) {
    match b {
        b'\n' | b'\r' | b'\t' | 0x08 => out.push(b),
        0x7F => out.extend_from_slice(b"^?"),
        _ => out.extend_from_slice(&[b'^', b ^ 0x40]),
    }
}

impl TerminalFilter {
    /// The printable form of `chunk`, given what earlier chunks left unfinished.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if b < 0x20 || b == 0x7F {
                push_c0(&mut out, b);
                i += 1;
                continue;
            }
            if b < 0x80 {
                out.push(b);
                i += 1;
                continue;
            }
            let Some(len) = utf8_len(b) else {
                out.extend_from_slice(REPLACEMENT.as_bytes());
                i += 1;
                continue;
            };
            if i + len > input.len() {
                // Possibly the start of a character whose end is in the next chunk;
                // keep it if what is there so far is a valid beginning.
                if input[i + 1..].iter().all(|c| (0x80..=0xBF).contains(c)) {
                    self.pending = input[i..].to_vec();
                    break;
                }
                out.extend_from_slice(REPLACEMENT.as_bytes());
                i += 1;
                continue;
            }
            match std::str::from_utf8(&input[i..i + len]) {
                Ok(s) => {
                    match s.chars().next() {
                        Some(c @ '\u{80}'..='\u{9F}') => {
                            out.extend_from_slice(b"M-");
                            push_c0(&mut out, (c as u32 as u8) - 0x80);
                        }
                        _ => out.extend_from_slice(s.as_bytes()),
                    }
                    i += len;
                }
                Err(_) => {
                    out.extend_from_slice(REPLACEMENT.as_bytes());
                    i += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_all(chunks: &[&[u8]]) -> String {
        let mut f = TerminalFilter::default();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(f.push(c));
        }
        String::from_utf8(out).unwrap()
    }

    fn no_controls(s: &str) {
        assert!(
            !s.chars()
                .any(|c| c.is_control() && !"\n\r\t\u{8}".contains(c)),
            "{s:?}"
        );
    }

    #[test]
    fn osc52_clipboard_write_is_shown_not_executed() {
        let s = filter_all(&[b"\x1b]52;c;aGVsbG8=\x07after\n"]);
        assert_eq!(s, "^[]52;c;aGVsbG8=^Gafter\n");
        // String terminator form, and the 8-bit OSC (U+009D).
        let s = filter_all(&[b"\x1b]52;c;eA==\x1b\\", "\u{9d}52;c;eA==\u{9c}".as_bytes()]);
        assert_eq!(s, "^[]52;c;eA==^[\\M-^]52;c;eA==M-^\\");
        no_controls(&s);
    }

    #[test]
    fn csi_clear_screen_and_colours_are_neutralised() {
        let s = filter_all(&[b"\x1b[2J\x1b[H\x1b[31mred\x1b[0m"]);
        assert_eq!(s, "^[[2J^[[H^[[31mred^[[0m");
        // The 8-bit CSI (U+009B) too.
        assert_eq!(filter_all(&["\u{9b}2J".as_bytes()]), "M-^[2J");
    }

    #[test]
    fn sequences_split_across_reads_stay_neutralised() {
        // ESC at the end of one read, the rest in the next.
        assert_eq!(filter_all(&[b"a\x1b", b"[2Jb"]), "a^[[2Jb");
        // An 8-bit CSI split between its two UTF-8 bytes.
        assert_eq!(filter_all(&[b"a\xc2", b"\x9b2J"]), "aM-^[2J");
        // A DCS split over three reads.
        assert_eq!(filter_all(&[b"\x1bP", b"q#0;2", b"\x1b\\"]), "^[Pq#0;2^[\\");
    }

    #[test]
    fn text_and_allowed_controls_pass_unchanged() {
        let text = "héllo wörld ✓ 😀\r\n\ttab\u{8} done\n";
        assert_eq!(filter_all(&[text.as_bytes()]), text);
        // Split multibyte characters at every byte.
        let bytes = text.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(filter_all(&chunks), text);
        // Other C0 controls, DEL and bytes that are not UTF-8.
        assert_eq!(filter_all(&[b"\x00\x07\x0e\x7f\xff"]), "^@^G^N^?\u{FFFD}");
    }
}
