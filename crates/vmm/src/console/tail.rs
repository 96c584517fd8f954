//! The newest console output kept in memory, for the control protocol's tail request.

use std::collections::VecDeque;

/// The last `capacity` bytes written.
#[derive(Debug)]
pub struct TailRing {
    capacity: usize,
    bytes: VecDeque<u8>,
}

impl TailRing {
    pub fn new(capacity: usize) -> Self {
        TailRing {
            capacity,
            bytes: VecDeque::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    /// The newest `max` bytes, oldest first.
    pub fn last(&self, max: usize) -> Vec<u8> {
        let skip = self.bytes.len().saturating_sub(max);
        self.bytes.iter().skip(skip).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_bytes() {
        let mut r = TailRing::new(8);
        r.push(b"hello ");
        r.push(b"world");
        assert_eq!(r.last(100), b"lo world");
        assert_eq!(r.last(3), b"rld");
        r.push(b"0123456789abc");
        assert_eq!(r.last(100), b"56789abc");
        let mut empty = TailRing::new(0);
        empty.push(b"x");
        assert!(empty.last(10).is_empty());
    }
}
