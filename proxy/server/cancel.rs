//! `CancelRequest` routing. Clients get proxy-made `BackendKeyData`; while a client
//! holds a server connection its slot names that server's key, so a cancel arriving on
//! a new connection is forwarded to the right PostgreSQL backend.

use std::collections::HashMap;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::pool::BackendKey;

/// Which server a client's queries are running on right now, if any.
///
/// A session attaches and detaches its server on every transaction, and a cancel
/// request (which reads the slot) is rare: so the key is an atomic the session stores
/// without a lock, and the address, which stays the same while the session uses one
/// server (its primary, under transaction pooling), is replaced under a lock only
/// when it changes.
#[derive(Debug, Default)]
pub struct CancelSlot {
    /// The attached server's key ([`pack`]), 0 while detached (PostgreSQL's process
    /// ids are positive, so a key is never 0).
    key: AtomicU64,
    /// The address of the server attached last.
    address: Mutex<Option<Arc<str>>>,
    /// Which `Arc` `address` holds (it keeps it alive, so an equal pointer is the same
    /// address): attaching to the same server again takes no lock.
    address_ptr: AtomicPtr<u8>,
    /// Why the client is pinned to its server connection (`Pins` bits), for admins.
    pins: AtomicU8,
}

fn pack(key: BackendKey) -> u64 {
    (u64::from(key.pid as u32) << 32) | u64::from(key.secret as u32)
}

fn unpack(packed: u64) -> BackendKey {
    BackendKey {
        pid: (packed >> 32) as u32 as i32,
        secret: packed as u32 as i32,
    }
}

impl CancelSlot {
    pub fn set_pins(&self, pins: super::session_effects::Pins) {
        self.pins.store(pins.bits(), Ordering::Relaxed);
    }

    pub fn pins(&self) -> super::session_effects::Pins {
        super::session_effects::Pins::from_bits(self.pins.load(Ordering::Relaxed))
    }

    pub fn attach(&self, address: &Arc<str>, key: BackendKey) {
        let ptr = Arc::as_ptr(address) as *const u8;
        if self.address_ptr.load(Ordering::Relaxed).cast_const() != ptr {
            // Detached first: a reader never pairs the new address with the old key.
            self.key.store(0, Ordering::Release);
            *self.address.lock().unwrap_or_else(|e| e.into_inner()) = Some(address.clone());
            self.address_ptr.store(ptr.cast_mut(), Ordering::Relaxed);
        }
        self.key.store(pack(key), Ordering::Release);
    }

    pub fn detach(&self) {
        self.key.store(0, Ordering::Release);
    }

    /// The attached server's address and key. The key is read before and after the
    /// address: if it changed in between, the session moved on, and the slot is read
    /// again.
    fn target(&self) -> Option<(Arc<str>, BackendKey)> {
        loop {
            let key = self.key.load(Ordering::Acquire);
            if key == 0 {
                return None;
            }
            let address = self
                .address
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()?;
            if self.key.load(Ordering::Acquire) == key {
                return Some((address, unpack(key)));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: i32, secret: i32) -> BackendKey {
        BackendKey { pid, secret }
    }

    fn seen(slot: &CancelSlot) -> Option<(String, i32, i32)> {
        slot.target()
            .map(|(address, key)| (address.to_string(), key.pid, key.secret))
    }

    #[test]
    fn the_slot_names_the_server_attached_now() {
        let slot = CancelSlot::default();
        let primary: Arc<str> = Arc::from("127.0.0.1:5432");
        let replica: Arc<str> = Arc::from("127.0.0.1:5433");
        assert_eq!(seen(&slot), None);
        slot.attach(&primary, key(101, -7));
        assert_eq!(seen(&slot), Some((primary.to_string(), 101, -7)));
        slot.detach();
        assert_eq!(seen(&slot), None);
        // Same address, another backend: no lock taken, the new key is read.
        slot.attach(&primary, key(102, i32::MIN));
        assert_eq!(seen(&slot), Some((primary.to_string(), 102, i32::MIN)));
        slot.detach();
        slot.attach(&replica, key(i32::MAX, 1));
        assert_eq!(seen(&slot), Some((replica.to_string(), i32::MAX, 1)));
        // Attached again without a detach in between, back on the primary.
        slot.attach(&primary, key(103, 0));
        assert_eq!(seen(&slot), Some((primary.to_string(), 103, 0)));
    }
}
