//! Public connections: caps on how many a listener and a client may hold
//! ([`limits`]), deadlines on how long a request head, body or idle
//! keep-alive may take ([`deadline`], enforced by [`stream::Guarded`]), and
//! the accept loop both public listeners share ([`listener`]), and a polite
//! end for upgraded WebSocket connections at shutdown ([`drain`], [`ws`]).

pub mod deadline;
pub mod drain;
pub mod limits;
pub mod listener;
pub mod stream;
pub mod ws;
