//! WebSocket framing, just enough to close an upgraded connection politely
//! at shutdown: [`FrameTracker`] follows the frames the gateway writes to the
//! client (from the backend) so a close frame is only ever inserted between
//! two frames, never inside one. Pure: bytes in, state out.

/// Close frame, status 1001 ("going away"), unmasked (server to client).
pub const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Whether a `101 Switching Protocols` head upgrades to WebSocket.
pub fn upgrades_to_websocket(head: &[u8]) -> bool {
    head.windows(9).any(|w| w.eq_ignore_ascii_case(b"websocket"))
}

/// Where the writer is in the frame sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameTracker {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
}

impl FrameTracker {
    /// Between two frames: a frame can be inserted here.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Header length once its first two bytes are known.
    fn header_len(&self) -> usize {
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        }
    }

    /// The writer wrote `bytes`.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(bytes.len());
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header[self.have] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if self.have >= 2 && self.have == self.header_len() {
                self.remaining = self.payload_len();
                self.have = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0xAB, len));
        f
    }

    #[test]
    fn boundaries_are_found_across_split_writes_and_lengths() {
        for len in [0, 5, 125, 126, 300, 70_000] {
            let f = frame(len);
            for split in [1, 2, 3, 7, f.len() / 2, f.len() - 1] {
                if split == 0 || split >= f.len() {
                    continue;
                }
                let mut t = FrameTracker::default();
                t.feed(&f[..split]);
                assert!(!t.at_boundary(), "len {len} split {split}");
                t.feed(&f[split..]);
                assert!(t.at_boundary(), "len {len} split {split}");
            }
        }
        // Two frames in one write, then half of a third.
        let mut t = FrameTracker::default();
        let mut w = frame(3);
        w.extend(frame(200));
        t.feed(&w);
        assert!(t.at_boundary());
        t.feed(&frame(10)[..4]);
        assert!(!t.at_boundary());
    }

    #[test]
    fn masked_frames_count_their_key() {
        let mut t = FrameTracker::default();
        t.feed(&[0x81, 0x80 | 2, 1, 2, 3, 4]);
        assert!(!t.at_boundary());
        t.feed(b"hi");
        assert!(t.at_boundary());
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        assert!(upgrades_to_websocket(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\r\n"
        ));
        assert!(!upgrades_to_websocket(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n"
        ));
    }
}
