//! The gateway's only calls into unsafe territory, each with its reason:
//! lowering one thread's scheduling priority (no safe wrapper in std),
//! owning a listening socket handed over by a graceful upgrade (Pingora
//! sends it with SCM_RIGHTS and keeps its number in its table), and
//! ignoring SIGHUP until its handler is installed (std has no signal API;
//! tokio's needs a runtime, which does not exist that early).
#![allow(unsafe_code)]

use std::os::unix::io::{FromRawFd, RawFd};

/// Set the calling thread's niceness (Linux: per thread).
pub fn set_thread_niceness(nice: i32) -> std::io::Result<()> {
    // SAFETY: two system calls on the calling thread; no memory is shared.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Ignore SIGHUP until the reload handler replaces this (tokio installs its
/// own action over it): its default action would end the process, and a
/// SIGHUP sent to the whole service (a config reload) reaches a process
/// still starting, or waiting for a running one's sockets (`--upgrade`).
pub fn ignore_hangup_until_handled() {
    // SAFETY: sets one signal's disposition to SIG_IGN (glibc's signal()
    // is sigaction underneath); no handler code runs and no memory is
    // shared.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// The listening socket behind `fd`, owned from now on.
pub fn listener_from_fd(fd: RawFd) -> std::net::TcpListener {
    // SAFETY: `fd` was received from the previous process by Pingora's
    // upgrade bootstrap (SCM_RIGHTS gives this process its own descriptor),
    // it is the listening TCP socket entered for this address, and nothing
    // else in this process owns or closes it: the table only keeps its number
    // to hand it on again.
    unsafe { std::net::TcpListener::from_raw_fd(fd) }
}
