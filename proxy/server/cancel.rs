//! `CancelRequest` routing. Clients get proxy-made `BackendKeyData`; while a client
//! holds a server connection its slot names that server's key, so a cancel arriving on
//! a new connection is forwarded to the right PostgreSQL backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pool::BackendKey;

/// Which server a client's queries are running on right now, if any.
#[derive(Debug, Default)]
pub struct CancelSlot {
    current: Mutex<Option<(Arc<str>, BackendKey)>>,
    /// Why the client is pinned to its server connection (`Pins` bits), for admins.
    pins: std::sync::atomic::AtomicU8,
}

impl CancelSlot {
    pub fn set_pins(&self, pins: super::session_effects::Pins) {
        self.pins
            .store(pins.bits(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn pins(&self) -> super::session_effects::Pins {
        super::session_effects::Pins::from_bits(
            self.pins.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub fn attach(&self, address: &Arc<str>, key: BackendKey) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((address.clone(), key));
    }

    pub fn detach(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn target(&self) -> Option<(Arc<str>, BackendKey)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct Entry {
    secret: i32,
    slot: Arc<CancelSlot>,
    info: Arc<ClientInfo>,
}

/// What the admin console shows about a connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The session's own (user, database, peer, application_name).
    pub identity: Arc<super::session::ClientIdentity>,
    pub tls: bool,
    pub connected_at: std::time::SystemTime,
}

/// One row of `SHOW CLIENTS`.
#[derive(Debug, Clone)]
pub struct ClientView {
    pub pid: i32,
    pub info: Arc<ClientInfo>,
    /// The server connection the client holds right now, if any.
    pub server: Option<(String, i32)>,
    /// Why the client keeps its server connection between transactions ("" if not).
    pub pinned: String,
}

/// Proxy-issued keys of every connected client.
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<i32, Entry>>,
}

/// Removes the client's key when its session ends.
pub struct CancelRegistration {
    registry: Arc<CancelRegistry>,
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
}

impl Drop for CancelRegistration {
    fn drop(&mut self) {
        self.registry
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a (pid, secret) for a client: `preferred` (a real backend pid) when no
    /// other client has it, a fresh one otherwise. The secret is always the proxy's.
    pub fn register(
        self: &Arc<Self>,
        info: ClientInfo,
        preferred: Option<i32>,
    ) -> CancelRegistration {
        let slot = Arc::new(CancelSlot::default());
        let secret: i32 = rand::random();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let pid = match preferred.filter(|pid| *pid != 0 && !entries.contains_key(pid)) {
            Some(pid) => pid,
            None => loop {
                let pid = rand::random::<i32>() & 0x3fff_ffff;
                if pid != 0 && !entries.contains_key(&pid) {
                    break pid;
                }
            },
        };
        entries.insert(
            pid,
            Entry {
                secret,
                slot: slot.clone(),
                info: Arc::new(info),
            },
        );
        CancelRegistration {
            registry: self.clone(),
            pid,
            secret,
            slot,
        }
    }

    /// Forwards a cancel for a client's running query and returns once the server has
    /// acted on it (bounded). Unknown keys and wrong secrets are ignored silently, as
    /// PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.get(&pid) {
                Some(entry) if entry.secret == secret => entry.slot.target(),
                _ => None,
            }
        };
        let Some((address, key)) = target else {
            return;
        };
        super::cancel_forward::forward(&address, key).await;
    }

    pub fn client_count(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Every logged-in client, for the admin console and the HTTP API.
    pub fn clients(&self) -> Vec<ClientView> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut clients: Vec<ClientView> = entries
            .iter()
            .map(|(pid, entry)| ClientView {
                pid: *pid,
                info: entry.info.clone(),
                server: entry
                    .slot
                    .target()
                    .map(|(address, key)| (address.to_string(), key.pid)),
                pinned: entry.slot.pins().describe(),
            })
            .collect();
        clients.sort_by_key(|c| c.info.connected_at);
        clients
    }
}
