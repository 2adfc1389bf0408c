//! Single flight: concurrent misses of one key run the query once. The first miss
//! becomes the leader; the others wait (bounded) for it to store its result or give
//! up, then look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

type FlightMap = Arc<Mutex<HashMap<Bytes, watch::Receiver<bool>>>>;

#[derive(Default)]
pub struct Flights {
    inner: FlightMap,
}

/// Held by the leader; dropping it (result stored or not) wakes the followers.
pub struct FlightGuard {
    flights: FlightMap,
    key: Bytes,
    done: watch::Sender<bool>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        let _ = self.done.send(true);
    }
}

pub enum Joined {
    Leader(FlightGuard),
    Follower(watch::Receiver<bool>),
}

impl Flights {
    pub fn join(&self, key: &Bytes) -> Joined {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Joined::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        map.insert(key.clone(), rx);
        Joined::Leader(FlightGuard {
            flights: self.inner.clone(),
            key: key.clone(),
            done: tx,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Waits for the leader, at most `bound`.
pub async fn wait(mut follower: watch::Receiver<bool>, bound: Duration) {
    let _ = tokio::time::timeout(bound, follower.wait_for(|done| *done)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let flights = Flights::default();
        let key = Bytes::from_static(b"k");
        let Joined::Leader(guard) = flights.join(&key) else {
            panic!("first is leader")
        };
        let Joined::Follower(rx) = flights.join(&key) else {
            panic!("second follows")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(flights.join(&key), Joined::Leader(_)));
    }
}
