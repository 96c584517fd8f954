//! PIT channel 2 and the speaker port for PV domains, as Xen's `pv_pit_handler`
//! (xen/arch/x86/emul-i8254.c) answers a PV guest's port I/O: ports 0x42 (channel 2
//! counter), 0x43 (mode/command register) and 0x61 (gate, speaker, OUT2).
//!
//! Linux's `quick_pit_calibrate` programs channel 2 in mode 0 with the gate on and
//! polls the counter's MSB against the TSC; without this emulation each read returned
//! all ones, the loop ran its 50 000 iterations (~3 s of boot under rxen) and Linux
//! printed "Fast TSC calibration failed".
//!
//! The counter runs at [`PIT_HZ`] from a caller-supplied clock in nanoseconds (the
//! domain's monotonic system time): nothing is scheduled, a read computes the counter
//! from the time since the count was loaded, as Xen does. Channels 0 and 1 are not
//! reachable by a PV guest; control words for them are ignored. As in Xen, the gate
//! only restarts modes 1, 2, 3 and 5 (rising edge); modes 0 and 4 keep counting.
//!
//! This module owns the PIT's register state only: no KVM, no guest memory, no I/O.

/// The PIT's input clock (Hz).
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 2's counter port.
pub const PORT_CHANNEL2: u16 = 0x42;
/// The mode/command register.
pub const PORT_COMMAND: u16 = 0x43;
/// The system control port B: bit 0 channel 2's gate, bit 1 the speaker data, bit 4
/// the refresh toggle, bit 5 channel 2's OUT.
pub const PORT_SPEAKER: u16 = 0x61;

/// Whether a port is one this module answers.
pub fn handles(port: u16) -> bool {
    matches!(port, PORT_CHANNEL2 | PORT_COMMAND | PORT_SPEAKER)
}

/// The access mode of the counter (control word bits 4-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    /// LSB then MSB.
    Word,
}

/// Which byte of a 16-bit value the next access reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Byte {
    Lsb,
    Msb,
}

/// Channel 2 of an 8254 and the speaker bit of port 0x61.
#[derive(Debug, Clone)]
pub struct Pit {
    /// The loaded initial count (0 = 65 536).
    count: u32,
    /// When `count` was loaded (clock nanoseconds).
    load_time_ns: u64,
    mode: u8,
    access: Access,
    bcd: bool,
    /// Next byte a read returns (word access alternates).
    read_byte: Byte,
    /// Next byte a write sets (word access alternates).
    write_byte: Byte,
    /// The LSB of a word write, waiting for its MSB.
    write_lsb: u8,
    /// A latched count and the bytes of it still to read.
    latched: Option<(u16, Byte, bool)>,
    /// A latched status byte (read-back command).
    status: Option<u8>,
    gate: bool,
    speaker: bool,
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// A PIT as after reset: mode 0, word access, count 65 536 loaded at time 0,
    /// gate low.
    pub fn new() -> Self {
        Self {
            count: 0x1_0000,
            load_time_ns: 0,
            mode: 0,
            access: Access::Word,
            bcd: false,
            read_byte: Byte::Lsb,
            write_byte: Byte::Lsb,
            write_lsb: 0,
            latched: None,
            status: None,
            gate: false,
            speaker: false,
        }
    }

    /// An 8-bit `in` from `port` at clock time `now_ns` (all ones for other ports).
    pub fn read(&mut self, port: u16, now_ns: u64) -> u8 {
        match port {
            PORT_CHANNEL2 => self.read_counter(now_ns),
            PORT_SPEAKER => {
                // The refresh bit toggles every ~15 µs on real hardware; Xen derives it
                // from system time the same way.
                let refresh = (now_ns >> 14) & 1 == 1;
                u8::from(self.gate)
                    | (u8::from(self.speaker) << 1)
                    | (u8::from(refresh) << 4)
                    | (u8::from(self.out(now_ns)) << 5)
            }
            // The command register is write-only.
            _ => 0xff,
        }
    }

    /// An 8-bit `out` of `value` to `port` at clock time `now_ns` (ignored for other
    /// ports).
    pub fn write(&mut self, port: u16, value: u8, now_ns: u64) {
        match port {
            PORT_CHANNEL2 => self.write_counter(value, now_ns),
            PORT_COMMAND => self.command(value, now_ns),
            PORT_SPEAKER => {
                self.speaker = value & 2 != 0;
                self.set_gate(value & 1 != 0, now_ns);
            }
            _ => {}
        }
    }

    /// PIT ticks since the count was loaded.
    fn ticks(&self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.load_time_ns);
        ((u128::from(elapsed) * u128::from(PIT_HZ)) / 1_000_000_000) as u64
    }

    /// The counter's current value.
    fn counter(&self, now_ns: u64) -> u16 {
        let d = self.ticks(now_ns);
        let count = u64::from(self.count);
        let value = match self.mode {
            2 => count - d % count,
            // Mode 3 counts down by two, twice per period.
            3 => count - (2 * d) % count,
            // Modes 0, 1, 4, 5 count down through zero and wrap.
            _ => count.wrapping_sub(d),
        };
        value as u16
    }

    /// The channel's OUT pin (port 0x61 bit 5).
    fn out(&self, now_ns: u64) -> bool {
        let d = self.ticks(now_ns);
        let count = u64::from(self.count);
        match self.mode {
            0 => d >= count,
            1 => d < count,
            2 => !d.is_multiple_of(count) || d == 0,
            3 => d % count < count.div_ceil(2),
            // Modes 4 and 5 pulse low for one tick at terminal count.
            _ => d != count,
        }
    }

    fn command(&mut self, value: u8, now_ns: u64) {
        let channel = value >> 6;
        if channel == 3 {
            // Read-back: bit 3 selects channel 2; bit 5 clear latches the count, bit 4
            // clear latches the status.
            if value & (1 << 3) != 0 {
                if value & (1 << 5) == 0 {
                    self.latch_count(now_ns);
                }
                if value & (1 << 4) == 0 && self.status.is_none() {
                    self.status = Some(self.status_byte(now_ns));
                }
            }
            return;
        }
        if channel != 2 {
            return;
        }
        match (value >> 4) & 3 {
            0 => self.latch_count(now_ns),
            access => {
                self.access = match access {
                    1 => Access::Lsb,
                    2 => Access::Msb,
                    _ => Access::Word,
                };
                // Modes 6 and 7 are aliases of 2 and 3.
                self.mode = match (value >> 1) & 7 {
                    m @ 6..=7 => m - 4,
                    m => m,
                };
                self.bcd = value & 1 != 0;
                self.read_byte = Byte::Lsb;
                self.write_byte = Byte::Lsb;
                self.latched = None;
                self.status = None;
            }
        }
    }

    fn status_byte(&self, now_ns: u64) -> u8 {
        let access = match self.access {
            Access::Lsb => 1,
            Access::Msb => 2,
            Access::Word => 3,
        };
        (u8::from(self.out(now_ns)) << 7) | (access << 4) | (self.mode << 1) | u8::from(self.bcd)
    }

    fn latch_count(&mut self, now_ns: u64) {
        // A second latch before the first was read is ignored (8254 behaviour).
        if self.latched.is_none() {
            let first = match self.access {
                Access::Msb => Byte::Msb,
                _ => Byte::Lsb,
            };
            self.latched = Some((self.counter(now_ns), first, self.access == Access::Word));
        }
    }

    fn read_counter(&mut self, now_ns: u64) -> u8 {
        if let Some(status) = self.status.take() {
            return status;
        }
        if let Some((value, byte, word)) = self.latched {
            let [lsb, msb] = value.to_le_bytes();
            return match byte {
                Byte::Lsb if word => {
                    self.latched = Some((value, Byte::Msb, word));
                    lsb
                }
                Byte::Lsb => {
                    self.latched = None;
                    lsb
                }
                Byte::Msb => {
                    self.latched = None;
                    msb
                }
            };
        }
        let [lsb, msb] = self.counter(now_ns).to_le_bytes();
        match self.access {
            Access::Lsb => lsb,
            Access::Msb => msb,
            Access::Word => match self.read_byte {
                Byte::Lsb => {
                    self.read_byte = Byte::Msb;
                    lsb
                }
                Byte::Msb => {
                    self.read_byte = Byte::Lsb;
                    msb
                }
            },
        }
    }

    fn write_counter(&mut self, value: u8, now_ns: u64) {
        match self.access {
            Access::Lsb => self.load(u16::from(value), now_ns),
            Access::Msb => self.load(u16::from(value) << 8, now_ns),
            Access::Word => match self.write_byte {
                Byte::Lsb => {
                    self.write_lsb = value;
                    self.write_byte = Byte::Msb;
                }
                Byte::Msb => {
                    self.write_byte = Byte::Lsb;
                    self.load(u16::from_le_bytes([self.write_lsb, value]), now_ns);
                }
            },
        }
    }

    /// Loads a new count (0 = 65 536) and restarts counting.
    fn load(&mut self, value: u16, now_ns: u64) {
        self.count = if value == 0 {
            0x1_0000
        } else {
            u32::from(value)
        };
        self.load_time_ns = now_ns;
    }

    fn set_gate(&mut self, gate: bool, now_ns: u64) {
        if gate && !self.gate && matches!(self.mode, 1 | 2 | 3 | 5) {
            self.load_time_ns = now_ns;
        }
        self.gate = gate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nanoseconds of `ticks` PIT ticks (rounded up so `ticks()` sees them all).
    fn ns(ticks: u64) -> u64 {
        (ticks * 1_000_000_000).div_ceil(PIT_HZ)
    }

    /// What Linux's `quick_pit_calibrate` does: gate on and speaker off through 0x61,
    /// mode 0 with LSB/MSB access, count 0xffff, then MSB reads (`pit_expect_msb`
    /// reads LSB and MSB each time and looks at the MSB).
    #[test]
    fn linux_quick_calibration_sees_the_msb_count_down() {
        let mut pit = Pit::new();
        let t0 = 1_000_000;
        let b = pit.read(PORT_SPEAKER, t0);
        pit.write(PORT_SPEAKER, (b & !2) | 1, t0);
        pit.write(PORT_COMMAND, 0xb0, t0);
        pit.write(PORT_CHANNEL2, 0xff, t0);
        pit.write(PORT_CHANNEL2, 0xff, t0);
        // Right after loading: 0xffff.
        assert_eq!(pit.read(PORT_CHANNEL2, t0), 0xff);
        assert_eq!(pit.read(PORT_CHANNEL2, t0), 0xff);
        // 256 ticks later the MSB is 0xfe, 512 later 0xfd.
        let t = t0 + ns(256);
        pit.read(PORT_CHANNEL2, t);
        assert_eq!(pit.read(PORT_CHANNEL2, t), 0xfe);
        let t = t0 + ns(512 + 3);
        assert_eq!(pit.read(PORT_CHANNEL2, t), 0xfc);
        assert_eq!(pit.read(PORT_CHANNEL2, t), 0xfd);
        // OUT2 is low until terminal count in mode 0, and the gate reads back.
        assert_eq!(pit.read(PORT_SPEAKER, t) & 0x23, 0x01);
        let end = t0 + ns(0xffff);
        assert_eq!(pit.read(PORT_SPEAKER, end) & 0x20, 0x20);
    }

    #[test]
    fn latch_command_freezes_the_count_until_both_bytes_are_read() {
        let mut pit = Pit::new();
        pit.write(PORT_COMMAND, 0xb4, 0); // channel 2, word, mode 2
        pit.write(PORT_CHANNEL2, 0x00, 0);
        pit.write(PORT_CHANNEL2, 0x10, 0); // 0x1000
        pit.write(PORT_COMMAND, 0x80, ns(0x10)); // latch channel 2
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x500)), 0xf0);
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x600)), 0x0f);
        // Unlatched again: live value 0x1000 - 0x600.
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x600)), 0x00);
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x600)), 0x0a);
    }

    #[test]
    fn lobyte_and_hibyte_access_modes() {
        let mut pit = Pit::new();
        pit.write(PORT_COMMAND, 0x90, 0); // channel 2, LSB only, mode 0
        pit.write(PORT_CHANNEL2, 0x80, 0);
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x10)), 0x70);
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x10)), 0x70, "no byte toggle");
        pit.write(PORT_COMMAND, 0xa0, 0); // channel 2, MSB only, mode 0
        pit.write(PORT_CHANNEL2, 0x20, 0); // count 0x2000
        assert_eq!(pit.read(PORT_CHANNEL2, ns(0x100)), 0x1f);
    }

    #[test]
    fn mode_2_and_3_reload_and_out_follows_the_period() {
        let mut pit = Pit::new();
        pit.write(PORT_SPEAKER, 1, 0);
        pit.write(PORT_COMMAND, 0xb6, 0); // channel 2, word, mode 3
        pit.write(PORT_CHANNEL2, 100, 0);
        pit.write(PORT_CHANNEL2, 0, 0);
        // Mode 3 counts by two: after 10 ticks 80, after 50 ticks reloaded (100).
        assert_eq!(pit.read(PORT_CHANNEL2, ns(10)), 80);
        pit.read(PORT_CHANNEL2, ns(10));
        assert_eq!(
            pit.read(PORT_SPEAKER, ns(10)) & 0x20,
            0x20,
            "first half high"
        );
        assert_eq!(pit.read(PORT_SPEAKER, ns(60)) & 0x20, 0, "second half low");
        pit.write(PORT_COMMAND, 0xb4, 0); // mode 2
        pit.write(PORT_CHANNEL2, 100, 0);
        pit.write(PORT_CHANNEL2, 0, 0);
        assert_eq!(pit.read(PORT_CHANNEL2, ns(130)), 70);
        pit.read(PORT_CHANNEL2, ns(130));
        // A rising gate edge restarts mode 2.
        pit.write(PORT_SPEAKER, 0, ns(130));
        pit.write(PORT_SPEAKER, 1, ns(200));
        assert_eq!(pit.read(PORT_CHANNEL2, ns(200) + ns(5)), 95);
    }

    #[test]
    fn read_back_status_and_other_channels() {
        let mut pit = Pit::new();
        pit.write(PORT_COMMAND, 0xb0, 0);
        pit.write(PORT_CHANNEL2, 0x34, 0);
        pit.write(PORT_CHANNEL2, 0x12, 0);
        // Channel 0's control word leaves channel 2 alone.
        pit.write(PORT_COMMAND, 0x34, 0);
        pit.write(PORT_COMMAND, 0xe8, 0); // read-back status of channel 2
        assert_eq!(pit.read(PORT_CHANNEL2, 0), 0x30, "OUT low, word, mode 0");
        assert_eq!(pit.read(PORT_CHANNEL2, 0), 0x34);
        assert_eq!(pit.read(PORT_COMMAND, 0), 0xff);
        assert!(handles(0x61) && handles(0x42) && !handles(0x40));
    }
}
