//! Single flight: concurrent misses of one key run the query once. The first miss
//! becomes the leader; the others wait (bounded) for it to store its result or give
//! up, then look again. When a write overtook the leader (its result is not stored),
//! the followers hear so and join the next flight together.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

/// How a flight ended, as its followers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landing {
    /// The leader is still running the query.
    Running,
    /// The leader is done: its result is stored, or it was not cacheable (an error,
    /// too large): look again, and run the query alone on a miss.
    Done,
    /// A write committed while the leader ran, so its result was not stored: join
    /// the next flight rather than all running the query at once.
    Superseded,
}

type FlightMap = Arc<Mutex<HashMap<Bytes, watch::Receiver<Landing>>>>;

#[derive(Default)]
pub struct Flights {
    inner: FlightMap,
}

/// Held by the leader; dropping it wakes the followers (with [`Landing::Done`] unless
/// [`FlightGuard::superseded`] said otherwise).
pub struct FlightGuard {
    flights: FlightMap,
    key: Bytes,
    done: watch::Sender<Landing>,
    /// What dropping the guard tells the followers.
    landing: Landing,
}

impl FlightGuard {
    /// The leader's result could not be stored because a write overtook it.
    pub fn superseded(&mut self) {
        self.landing = Landing::Superseded;
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        let _ = self.done.send(self.landing);
    }
}

pub enum Joined {
    Leader(FlightGuard),
    Follower(watch::Receiver<Landing>),
}

impl Flights {
    pub fn join(&self, key: &Bytes) -> Joined {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Joined::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(Landing::Running);
        map.insert(key.clone(), rx);
        Joined::Leader(FlightGuard {
            flights: self.inner.clone(),
            key: key.clone(),
            done: tx,
            landing: Landing::Done,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Waits for the leader, at most `bound`: how its flight ended, or `Running` when
/// the bound passed first.
pub async fn wait(mut follower: watch::Receiver<Landing>, bound: Duration) -> Landing {
    match tokio::time::timeout(bound, follower.wait_for(|l| *l != Landing::Running)).await {
        Ok(Ok(landing)) => *landing,
        // The sender is gone without a word: treat it as done.
        Ok(Err(_)) => Landing::Done,
        Err(_) => Landing::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader of key `k`, and a follower already waiting for it (up to 5 s).
    fn leader_and_waiting_follower(
        flights: &Flights,
    ) -> (FlightGuard, tokio::task::JoinHandle<Landing>) {
        let key = Bytes::from_static(b"k");
        let Joined::Leader(guard) = flights.join(&key) else {
            panic!("first is leader")
        };
        let Joined::Follower(rx) = flights.join(&key) else {
            panic!("second follows")
        };
        (guard, tokio::spawn(wait(rx, Duration::from_secs(5))))
    }

    async fn landing(waiter: tokio::task::JoinHandle<Landing>) -> Landing {
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn followers_wake_when_the_leader_is_done() {
        let flights = Flights::default();
        let (guard, waiter) = leader_and_waiting_follower(&flights);
        drop(guard);
        assert_eq!(landing(waiter).await, Landing::Done);
        assert_eq!(flights.in_flight(), 0);
        assert!(matches!(
            flights.join(&Bytes::from_static(b"k")),
            Joined::Leader(_)
        ));
    }

    #[tokio::test]
    async fn followers_hear_that_a_write_overtook_the_leader() {
        let flights = Flights::default();
        let (mut guard, waiter) = leader_and_waiting_follower(&flights);
        guard.superseded();
        drop(guard);
        assert_eq!(landing(waiter).await, Landing::Superseded);
    }

    #[tokio::test]
    async fn a_follower_stops_waiting_at_its_bound() {
        let flights = Flights::default();
        let key = Bytes::from_static(b"k");
        let _leader = flights.join(&key);
        let Joined::Follower(rx) = flights.join(&key) else {
            panic!("second follows")
        };
        assert_eq!(wait(rx, Duration::from_millis(20)).await, Landing::Running);
    }
}
