//! A server connection checked out of its pool, together with its place in the pool's
//! fair gate. Dropping it returns the connection first (parked warm, or to bb8), then
//! hands the place to the next waiting client in turn (which then finds the connection
//! there). Without a gate (fairness off, no `pool.max_waiting`) there is no permit.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use super::fair_gate::GatePermit;
use super::warm_stack::{Lent, WarmStack};
use super::ServerConnection;

pub struct PooledServer {
    // Field order matters: the connection goes back before the permit moves on.
    // `None` only inside `drop`.
    connection: Option<Lent>,
    warm: Arc<WarmStack>,
    _permit: Option<GatePermit>,
}

impl PooledServer {
    pub(super) fn new(
        connection: Lent,
        warm: Arc<WarmStack>,
        permit: Option<GatePermit>,
    ) -> PooledServer {
        PooledServer {
            connection: Some(connection),
            warm,
            _permit: permit,
        }
    }
}

impl Drop for PooledServer {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.take() {
            self.warm.park(connection);
        }
    }
}

impl Deref for PooledServer {
    type Target = ServerConnection;

    fn deref(&self) -> &ServerConnection {
        self.connection.as_ref().expect("present until dropped")
    }
}

impl DerefMut for PooledServer {
    fn deref_mut(&mut self) -> &mut ServerConnection {
        self.connection.as_mut().expect("present until dropped")
    }
}
