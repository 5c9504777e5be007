//! The WebSocket frame tracker (`conn::ws::FrameTracker`), which decides
//! where the gateway may insert its close frame at shutdown: it is
//! between two frames exactly at the ends of the frames written, however
//! the writes split them, and any bytes leave it in the same state
//! whether written at once or in pieces.

use arbitrary::Arbitrary;
use gateway::conn::ws::FrameTracker;

#[derive(Debug, Arbitrary)]
pub struct Input {
    pub frames: Vec<Frame>,
    /// Where the writes split the stream (lengths of the writes).
    pub writes: Vec<u8>,
    pub noise: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
pub struct Frame {
    pub opcode: u8,
    pub masked: bool,
    /// Payload length: small, or forced into the 16-bit or 64-bit form.
    pub len: u16,
    pub form: u8,
}

impl Frame {
    fn bytes(&self) -> Vec<u8> {
        let len = usize::from(self.len) % 300;
        let mask = if self.masked { 0x80 } else { 0 };
        let mut out = vec![0x80 | (self.opcode & 0x0F)];
        match (self.form % 3, len) {
            (0, n) if n < 126 => out.push(mask | n as u8),
            (0 | 1, n) if n <= usize::from(u16::MAX) => {
                out.push(mask | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            (_, n) => {
                out.push(mask | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out.extend(std::iter::repeat_n(0x61, len));
        out
    }
}

pub fn run(data: &[u8]) {
    crate::run::<Input>(data, check);
}

/// `bytes` fed in writes of the given lengths (cycled; 0 counts as 1).
fn feed_split(bytes: &[u8], writes: &[u8]) -> FrameTracker {
    let mut t = FrameTracker::default();
    let mut rest = bytes;
    let mut sizes = writes.iter().map(|&w| usize::from(w.max(1))).cycle();
    while !rest.is_empty() {
        let n = if writes.is_empty() {
            rest.len()
        } else {
            sizes.next().unwrap_or(1).min(rest.len())
        };
        t.feed(&rest[..n]);
        rest = &rest[n..];
    }
    t
}

pub fn check(input: &Input) {
    let frames: Vec<Vec<u8>> = input.frames.iter().take(16).map(Frame::bytes).collect();
    let stream: Vec<u8> = frames.concat();
    let mut ends = std::collections::HashSet::from([0usize]);
    let mut at = 0;
    for f in &frames {
        at += f.len();
        ends.insert(at);
    }
    // Byte by byte: a boundary exactly at each frame's end.
    let mut t = FrameTracker::default();
    for (i, b) in stream.iter().enumerate() {
        assert_eq!(t.at_boundary(), ends.contains(&i), "boundary after {i} bytes");
        t.feed(std::slice::from_ref(b));
    }
    assert!(t.at_boundary(), "not between frames after all of them");
    assert!(
        feed_split(&stream, &input.writes).at_boundary(),
        "split writes lost the boundary"
    );
    // Any bytes: the same state however they are split.
    let noise = &input.noise[..input.noise.len().min(4096)];
    assert_eq!(
        feed_split(noise, &input.writes),
        feed_split(noise, &[]),
        "the state depends on how the writes split"
    );
}
