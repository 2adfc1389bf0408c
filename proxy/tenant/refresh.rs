//! Keeps each guarded database's catalog current: a background task loads it at
//! start, every `tenancy.refresh_interval_ms`, and whenever asked (after DDL, or
//! when a statement names a relation the catalog does not know).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::catalog::{self, Catalog};
use crate::config::TenancyConfig;

pub struct CatalogHandle {
    current: ArcSwapOption<Catalog>,
    /// The start number of the last load stored (loads run one at a time, numbered
    /// from 1 as they start); sessions wait for the first.
    generation: watch::Sender<u64>,
    /// Loads started so far.
    started: AtomicU64,
    wake: Notify,
    last_error: Mutex<Option<String>>,
}

impl CatalogHandle {
    pub fn new() -> Arc<CatalogHandle> {
        Arc::new(CatalogHandle {
            current: ArcSwapOption::empty(),
            generation: watch::Sender::new(0),
            started: AtomicU64::new(0),
            wake: Notify::new(),
            last_error: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Option<Arc<Catalog>> {
        self.current.load_full()
    }

    /// The catalog, waiting up to `wait` for the first load.
    pub async fn ready(&self, wait: Duration) -> Result<Arc<Catalog>, String> {
        if let Some(catalog) = self.current() {
            return Ok(catalog);
        }
        let mut generation = self.generation.subscribe();
        let _ = tokio::time::timeout(wait, generation.wait_for(|g| *g > 0)).await;
        self.current().ok_or_else(|| {
            self.last_error
                .lock()
                .map(|e| e.clone())
                .ok()
                .flatten()
                .unwrap_or_else(|| "the catalog has not been loaded yet".into())
        })
    }

    pub fn request_refresh(&self) {
        self.wake.notify_one();
    }

    /// Asks for a new load and waits up to `wait` for one that started after this
    /// call (a load already running may predate what the caller looks for). `None`
    /// when none finished in time.
    pub async fn refreshed(&self, wait: Duration) -> Option<Arc<Catalog>> {
        let asked_after = self.started.load(Ordering::SeqCst);
        let mut generation = self.generation.subscribe();
        self.request_refresh();
        tokio::time::timeout(wait, generation.wait_for(|g| *g > asked_after))
            .await
            .ok()?
            .ok()?;
        self.current()
    }

    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Numbers a load as it starts.
    fn start_load(&self) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Stores what load number `load` found: a new catalog, or None when it found the
    /// one held (kept, with its id and the decisions made against it).
    fn store(&self, catalog: Option<Catalog>, load: u64) {
        if let Some(catalog) = catalog {
            self.current.store(Some(Arc::new(catalog)));
        }
        if let Ok(mut error) = self.last_error.lock() {
            *error = None;
        }
        self.generation.send_modify(|g| *g = (*g).max(load));
    }

    fn failed(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

/// Starts the refresh task; it ends when the handle is dropped everywhere else.
/// `on_change` runs after a successful load that differs from the catalog held (it
/// clears the decision and shape caches, whose entries made against the old catalog
/// are no longer used anyway): a periodic load that finds the same catalog keeps it,
/// and what was decided against it.
pub fn spawn(
    handle: Arc<CatalogHandle>,
    url: String,
    config: TenancyConfig,
    on_change: impl Fn() + Send + 'static,
) {
    let interval = Duration::from_millis(config.refresh_interval_ms);
    tokio::spawn(async move {
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            if Arc::strong_count(&handle) == 1 {
                return;
            }
            let number = handle.start_load();
            match load(&mut client, &url, &config).await {
                Ok(catalog) => {
                    let changed = handle
                        .current()
                        .is_none_or(|held| !held.same_contents(&catalog));
                    handle.store(changed.then_some(catalog), number);
                    if changed {
                        on_change();
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "tenant guard: could not load the catalog");
                    client = None;
                    handle.failed(error);
                }
            }
            let retry = if handle.current().is_none() {
                Duration::from_millis(500).min(interval)
            } else {
                interval
            };
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = handle.wake.notified() => {
                    // Coalesce a burst of requests into one load.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    });
}

async fn load(
    client: &mut Option<tokio_postgres::Client>,
    url: &str,
    config: &TenancyConfig,
) -> Result<Catalog, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (fresh, connection) = crate::pool::connect_background(url, "tenant catalog")
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *client = Some(fresh);
    }
    let client = client.as_ref().expect("connected above");
    tokio::time::timeout(Duration::from_secs(10), catalog::load(client, config))
        .await
        .map_err(|_| "catalog query timed out".to_string())?
        .map_err(|e| e.to_string())
}
