//! The one place a listening socket is made from a raw file descriptor: the
//! sockets a graceful upgrade hands over (Pingora sends them over a Unix
//! socket with SCM_RIGHTS and keeps their numbers in its table).

use std::os::unix::io::{FromRawFd, RawFd};

/// The listening socket behind `fd`, owned from now on.
pub fn listener_from_fd(fd: RawFd) -> std::net::TcpListener {
    // SAFETY: `fd` was received from the previous process by Pingora's
    // upgrade bootstrap (SCM_RIGHTS gives this process its own descriptor),
    // it is the listening TCP socket entered for this address, and nothing
    // else in this process owns or closes it: the table only keeps its number
    // to hand it on again.
    unsafe { std::net::TcpListener::from_raw_fd(fd) }
}
