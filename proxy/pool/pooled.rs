//! A server connection checked out of its pool, together with its place in the pool's
//! fair gate. Dropping it returns the connection to bb8 first, then hands the place to
//! the next waiting client in turn (which then finds the connection idle). Without a
//! gate (fairness off, no `pool.max_waiting`) there is no permit.

use std::ops::{Deref, DerefMut};

use super::fair_gate::GatePermit;
use super::{ServerConnection, ServerConnector};

pub struct PooledServer {
    // Field order matters: the connection goes back before the permit moves on.
    connection: bb8::PooledConnection<'static, ServerConnector>,
    _permit: Option<GatePermit>,
}

impl PooledServer {
    pub(super) fn new(
        connection: bb8::PooledConnection<'static, ServerConnector>,
        permit: Option<GatePermit>,
    ) -> PooledServer {
        PooledServer {
            connection,
            _permit: permit,
        }
    }
}

impl Deref for PooledServer {
    type Target = ServerConnection;

    fn deref(&self) -> &ServerConnection {
        &self.connection
    }
}

impl DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConnection {
        &mut self.connection
    }
}
