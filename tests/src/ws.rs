//! A minimal RFC 6455 client over any byte stream (plain TCP or TLS), for
//! the upstream-app's `/ws` echo through the gateway. Sends a spoofed
//! `X-Tenant: mclaren` on the upgrade, which the gateway must drop.

use std::io::{Read, Write};

use anyhow::{bail, ensure, Result};

/// Send the upgrade request for `host` and read the 101 head.
pub fn upgrade<S: Read + Write>(s: &mut S, host: &str) -> Result<()> {
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Tenant: mclaren\r\n\r\n"
    )?;
    s.flush()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    Ok(())
}

/// Send one masked text frame (< 64 KiB) and read one unmasked text frame.
pub fn round_trip<S: Read + Write>(s: &mut S, msg: &str) -> Result<String> {
    let mask = [7u8, 1, 8, 2];
    let mut frame = vec![0x81];
    match msg.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&u16::try_from(n)?.to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(msg.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame)?;
    s.flush()?;
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr)?;
    ensure!(hdr[0] == 0x81 && hdr[1] & 0x80 == 0, "unexpected frame header {hdr:?}");
    let len = match hdr[1] {
        126 => {
            let mut ext = [0u8; 2];
            s.read_exact(&mut ext)?;
            usize::from(u16::from_be_bytes(ext))
        }
        127 => bail!("reply too large"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok(String::from_utf8(payload)?)
}
