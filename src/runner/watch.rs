//! Live queries as wake-ups: each notification of a new or changed pending row wakes the main
//! loop, with the row's id as a hint when it is due already.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::status::RunnerStatus;
use crate::store::{DueHint, Store};

/// How often a live query is re-armed even when nothing looks wrong: a server that restarted or
/// dropped the connection has forgotten it, and the client does not replay live queries, so this
/// bounds how long the runner can depend on polling alone.
const LIVE_REFRESH: Duration = Duration::from_secs(30);

/// New due rows reported by the live queries, waiting for the main loop.
#[derive(Default)]
pub(super) struct Hints {
    /// `(backend index, row)`.
    pub(super) rows: Vec<(usize, DueHint)>,
    /// Some hints were dropped (too many at once): the next look must be a full round.
    pub(super) overflowed: bool,
}

/// The most hints kept between two looks; a bulk insert beyond it is found by the full round.
const MAX_HINTS: usize = 1024;

/// What one live query watches, and where its hints go.
pub(super) struct WatchTarget {
    pub(super) table: crate::store::TableName,
    pub(super) backend: usize,
    pub(super) hints: Arc<Mutex<Hints>>,
}

impl WatchTarget {
    fn hint(&self, hint: Option<DueHint>) {
        let mut hints = self.hints.lock().expect("hints lock");
        match hint {
            Some(hint) if hints.rows.len() < MAX_HINTS => hints.rows.push((self.backend, hint)),
            // A change the loop cannot act on by id (or too many): it must look properly.
            _ => hints.overflowed = true,
        }
    }
}

/// Keeps a LIVE SELECT open on `table`, on a connection of its own, and turns each notification
/// into a wake-up (with the row's id as a hint when it is due). Re-arms it when it ends, after every reconnect of the main connection, and
/// every [`LIVE_REFRESH`]; with a capped backoff while it cannot be started. Once `stop` is
/// cancelled it ends its query (KILL) before returning: a live query left on the server costs
/// the database work on every write to the table until the server drops it.
pub(super) async fn watch_table(
    store: Store,
    target: WatchTarget,
    wake: Arc<Notify>,
    status: Arc<RunnerStatus>,
    stop: CancellationToken,
) {
    let table = target.table.clone();
    use futures::StreamExt;
    let mut reconnects = store.health().reconnects();
    let mut pause = Duration::from_millis(200);
    loop {
        let connection = match stop.run_until_cancelled(store.own_connection()).await {
            None => return,
            Some(Ok(connection)) => connection,
            Some(Err(e)) => {
                tracing::warn!(%table, error = %e, "no connection for live queries; polling only until there is one");
                match backoff(&stop, &mut pause).await {
                    true => continue,
                    false => return,
                }
            }
        };
        loop {
            let mut watch = match connection.watch_pending(&table).await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(%table, error = %e, "live query unavailable; polling only until it can be re-armed");
                    break;
                }
            };
            pause = Duration::from_millis(200);
            status.live_armed.fetch_add(1, Ordering::SeqCst);
            // Anything may have changed while the query was down.
            wake.notify_one();
            let refresh = tokio::time::sleep(LIVE_REFRESH);
            tokio::pin!(refresh);
            let ended = loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break true,
                    item = watch.hints.next() => match item {
                        Some(hint) => {
                            target.hint(hint);
                            wake.notify_one();
                        }
                        None => break false,
                    },
                    changed = reconnects.changed() => {
                        if changed.is_err() {
                            break true;
                        }
                        tracing::info!(%table, "re-arming the live query after a reconnect");
                        break false;
                    }
                    () = &mut refresh => break false,
                }
            };
            status.live_armed.fetch_sub(1, Ordering::SeqCst);
            // After a reconnect the query is gone with the old connection, and this fails.
            if let Err(e) = connection.end_watch(watch).await {
                tracing::debug!(%table, error = %e, "could not end the previous live query");
            }
            if ended || stop.is_cancelled() {
                return;
            }
        }
        if !backoff(&stop, &mut pause).await {
            return;
        }
    }
}

/// Waits `pause`, then doubles it up to 30 s; `false` when `stop` came first.
async fn backoff(stop: &CancellationToken, pause: &mut Duration) -> bool {
    let waited = stop.run_until_cancelled(tokio::time::sleep(*pause)).await;
    *pause = (*pause * 2).min(Duration::from_secs(30));
    waited.is_some()
}

/// Counts the database's comebacks for `/metrics`, until `stop`.
pub(super) async fn count_reconnects(
    store: Store,
    status: Arc<RunnerStatus>,
    stop: CancellationToken,
) {
    let mut reconnects = store.health().reconnects();
    while let Some(Ok(())) = stop.run_until_cancelled(reconnects.changed()).await {
        status.metrics.db_reconnects.inc();
    }
}
