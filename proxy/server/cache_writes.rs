//! The result cache's write side in a session: note what each statement forwarded to
//! the primary may change (names, and keys bound from `Bind` parameters), and when its
//! transaction commits, resolve that on the same server connection, tell the other
//! instances (NOTIFY) and invalidate here, before the client sees the commit.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::client_messages::ParsedParse;
use super::session::Session;
use crate::cache::commit_hook::{self, Resolution, WriteShape};
use crate::cache::row_key::{declared_types, BindParameters};
use crate::cache::{self, WriteNames};
use crate::protocol::extended::{BindView, ParseView};
use crate::protocol::frame::{body, query_text};
use crate::protocol::tag::frontend as tag;
use crate::route::{DataAccess, StatementClass};

/// Named statements whose write effects a session remembers before forgetting them all
/// (then their `Bind`s count as "writes everything").
const MAX_STATEMENT_EFFECTS: usize = 4096;

/// What one prepared statement may write, with its `Parse` definition (for the declared
/// types of the parameters its keys are bound from).
#[derive(Clone)]
pub(super) struct StatementWrites {
    writes: Arc<WriteNames>,
    definition: Bytes,
}

impl Session {
    /// Notes what a message forwarded to the primary may write.
    pub(super) fn cache_note_forwarded(
        &mut self,
        message_tag: u8,
        frame: &[u8],
        parse: ParsedParse<'_>,
    ) {
        if self.caching.is_none() {
            return;
        }
        self.note_transaction_kind(message_tag, frame, parse);
        if let Some(Ok(view)) = parse {
            self.forget_redefined_writes(view);
        }
        if self.backend != 0 || !matches!(message_tag, tag::QUERY | tag::PARSE | tag::BIND) {
            return;
        }
        let Some(state) = self.caching.as_mut() else {
            return;
        };
        let cache = &self.runtime.cache;
        if !cache.tracks_writes_memoized(&self.identity.database, &mut state.activity) {
            // No instance caches this database: what the statement writes does not
            // matter. Should one start caching before this transaction commits, the
            // commit counts as writing everything.
            state.unknown_writes = true;
            return;
        }
        match message_tag {
            tag::QUERY => {
                if let Some(writes) = self.writes_of(query_text(frame)) {
                    if let Some(state) = self.caching.as_mut() {
                        state.writes.merge_owned(writes.bound(None));
                    }
                }
            }
            tag::PARSE => {
                let Some(Ok(view)) = parse else {
                    return;
                };
                // Drivers parse the same unnamed text again and again: what it writes
                // depends on the text alone, so it is known already.
                let same_unnamed = view.statement.is_empty()
                    && self.caching.as_ref().is_some_and(|state| {
                        state
                            .unnamed_writes
                            .as_ref()
                            .is_some_and(|known| known.definition == view.definition)
                    });
                if same_unnamed {
                    return;
                }
                if view.statement.is_empty() {
                    if let Some(state) = self.caching.as_mut() {
                        if let Some(known) = state.recent_unnamed.get(view.definition) {
                            state.unnamed_writes = Some(known.clone());
                            return;
                        }
                    }
                }
                let writes = StatementWrites {
                    writes: self.writes_of(view.query).unwrap_or_default(),
                    definition: Bytes::copy_from_slice(view.definition),
                };
                let Some(state) = self.caching.as_mut() else {
                    return;
                };
                if view.statement.is_empty() {
                    state
                        .recent_unnamed
                        .remember(view.definition, writes.clone());
                    state.unnamed_writes = Some(writes);
                } else {
                    remember_statement_writes(state, view.statement, writes);
                }
            }
            tag::BIND => {
                let Ok(view) = BindView::parse(body(frame)) else {
                    return;
                };
                let Some(state) = self.caching.as_ref() else {
                    return;
                };
                let known = if view.statement.is_empty() {
                    state.unnamed_writes.as_ref()
                } else {
                    state.statement_writes.get(view.statement)
                };
                if known.is_some_and(|w| w.writes.is_empty()) {
                    return; // a read: nothing to note
                }
                let mut writes = known.cloned();
                if writes.is_none() && !view.statement.is_empty() {
                    // Prepared by the proxy from its registry (never forwarded here).
                    let definition = self
                        .statements
                        .get(view.statement)
                        .map(|statement| statement.definition.clone());
                    if let Some(definition) = definition {
                        let query_len = crate::protocol::extended::cstr(&definition)
                            .map_or(0, |(q, _)| q.len());
                        let query = definition.slice(0..query_len);
                        let worked_out = StatementWrites {
                            writes: self.writes_of(&query).unwrap_or_default(),
                            definition,
                        };
                        // Kept, so the next `Bind` of it does not scan and classify the
                        // text again (until a `Parse` redefines the name).
                        if let Some(state) = self.caching.as_mut() {
                            remember_statement_writes(state, view.statement, worked_out.clone());
                        }
                        writes = Some(worked_out);
                    }
                }
                let Some(state) = self.caching.as_mut() else {
                    return;
                };
                let Some(writes) = writes else {
                    state.unknown_writes = true;
                    return;
                };
                if writes.writes.keyed.is_empty() {
                    // Nothing to fill in from the parameters.
                    state.writes.merge(&writes.writes);
                } else {
                    let types = declared_types(&writes.definition);
                    let params = BindParameters::parse(view.rest);
                    state.writes.merge_owned(
                        writes
                            .writes
                            .bound(params.as_ref().map(|p| (p, types.as_slice()))),
                    );
                }
            }
            _ => {}
        }
    }

    /// A `Parse` redefines its statement: what was noted for the old text no longer
    /// holds. Forgotten before anything decides whether this `Parse` is noted: it is
    /// not when it goes to a replica (a `BEGIN READ ONLY` transaction may prepare an
    /// `UPDATE`) or while no instance caches the database, and a later `Bind` on the
    /// primary would otherwise take the new text for the old one (a read, "nothing to
    /// note") and leave its writes uninvalidated.
    fn forget_redefined_writes(&mut self, view: ParseView<'_>) {
        let Some(state) = self.caching.as_mut() else {
            return;
        };
        if !view.statement.is_empty() {
            state.statement_writes.remove(view.statement);
        } else if state
            .unnamed_writes
            .as_ref()
            .is_some_and(|known| known.definition != view.definition)
        {
            state.unnamed_writes = None;
        }
    }

    /// What a statement text may write, or `None` when it only reads.
    fn writes_of(&mut self, sql: &[u8]) -> Option<Arc<WriteNames>> {
        let text = crate::protocol::text::lossy(sql);
        let shape = self.query_scan(sql).shape.hash;
        let class = self
            .runtime
            .routing()
            .classify_memoized(&text, shape, &mut self.class_memo);
        match class {
            StatementClass::Write => Some(self.runtime.cache.write_names(&text)),
            _ => None,
        }
    }

    /// Resolves what `writes` changed (the catalog facts remembered per shape of write),
    /// then reads the commit position and sends the change list to other instances.
    async fn commit_hook(
        &mut self,
        writes: &WriteNames,
        everything: bool,
        notify: bool,
    ) -> Result<cache::Invalidation, String> {
        let cache = self.runtime.cache.clone();
        let database = self.identity.database.clone();
        let settings = self.settings.hash();
        let server = self.server.as_mut().ok_or("no server")?;
        let resolution = if everything {
            Arc::new(Resolution {
                everything: true,
                tables: Vec::new(),
                keyed: Default::default(),
            })
        } else {
            let key = (
                database.clone(),
                settings,
                WriteShape::new(&writes.relations, &writes.keys, &writes.functions),
            );
            match cache.resolution(&key) {
                Some(resolution) => resolution,
                None => {
                    let answer = server
                        .query_values(&commit_hook::resolution_question(&key.2))
                        .await
                        .map_err(|e| e.to_string())?;
                    let resolution = Arc::new(
                        commit_hook::resolution_answer(&key.2, &answer)
                            .ok_or("unreadable catalog answer")?,
                    );
                    cache.remember_resolution(key, resolution.clone());
                    resolution
                }
            }
        };
        let has_replicas = self
            .routing
            .as_ref()
            .is_some_and(|r| r.topology.backends.len() > 1);
        if !has_replicas && !cache.others_may_cache(&database) {
            // Nobody else to tell, and no replica whose fills need the commit position:
            // invalidating here is all there is to do (no round trip).
            return Ok(resolution.invalidation(&writes.keys, 0));
        }
        let server = self.server.as_mut().ok_or("no server")?;
        let answer = server
            .query_values(&commit_hook::notify_question(
                cache.instance,
                &database,
                &resolution.changes(&writes.keys),
                notify,
            ))
            .await
            .map_err(|e| e.to_string())?;
        let lsn = commit_hook::notify_answer(&answer).ok_or("unreadable commit position")?;
        Ok(resolution.invalidation(&writes.keys, lsn))
    }

    /// Whether the transaction is one whose reads the cache may answer: it began with a
    /// lone `BEGIN ... READ ONLY` (not `REPEATABLE READ` or `SERIALIZABLE`, and the
    /// session did not change `default_transaction_isolation`) and has forwarded
    /// nothing but reads since. Anything else (`SET LOCAL`, a savepoint) ends that.
    fn note_transaction_kind(&mut self, message_tag: u8, frame: &[u8], parse: ParsedParse<'_>) {
        let idle = self.status == crate::protocol::tag::TransactionStatus::Idle;
        let read_only_now = self
            .caching
            .as_ref()
            .is_some_and(|c| c.read_only_transaction);
        if !idle && !read_only_now {
            return; // nothing to learn: the plain path pays one comparison
        }
        let sql: &[u8] = match message_tag {
            tag::QUERY => query_text(frame),
            tag::PARSE => match parse {
                Some(Ok(view)) => view.query,
                _ => b"",
            },
            tag::BIND => {
                let read = BindView::parse(body(frame)).is_ok_and(|view| {
                    view.statement.is_empty()
                        || self
                            .statements
                            .get(view.statement)
                            .is_some_and(|s| s.access == DataAccess::Reads)
                });
                if !read {
                    if let Some(state) = self.caching.as_mut() {
                        state.read_only_transaction = false;
                    }
                }
                return;
            }
            _ => return,
        };
        if idle && !may_begin_read_only(sql) {
            if let Some(state) = self.caching.as_mut() {
                state.read_only_transaction = false;
            }
            return;
        }
        let text = crate::protocol::text::lossy(sql);
        let class = self.runtime.routing().classify(&text);
        let upper = text.to_ascii_uppercase();
        let read_only_begin = matches!(class, StatementClass::Begin { read_only: true })
            && !upper.contains("REPEATABLE")
            && !upper.contains("SERIALIZABLE")
            && !upper.contains(';')
            && !self.settings.mentions("default_transaction_isolation");
        if let Some(state) = self.caching.as_mut() {
            state.read_only_transaction = if idle {
                read_only_begin
            } else {
                state.read_only_transaction && class == StatementClass::Read
            };
        }
    }

    /// The commit hook: resolve the written tables on the primary connection that ran
    /// the transaction, NOTIFY the other instances, invalidate here. Called once a
    /// settled transaction has writes and some instance caches its database
    /// (`cache_store_settled_fill` decides, and forgets the writes when none does).
    pub(super) async fn invalidate_writes(&mut self) {
        let Some(state) = self.caching.as_mut() else {
            return;
        };
        let writes = std::mem::take(&mut state.writes);
        let everything = writes.everything || std::mem::take(&mut state.unknown_writes);
        let cache = self.runtime.cache.clone();
        let database = self.identity.database.clone();
        let config = self.runtime.config();
        let answer = match self.server.as_mut() {
            Some(_) if self.backend == 0 => {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    self.commit_hook(&writes, everything, config.cache.notify),
                )
                .await
                {
                    Ok(Ok(invalidation)) => Some(invalidation),
                    Ok(Err(why)) => {
                        tracing::warn!(error = %why, "cache: invalidation query failed; dropping the database's entries");
                        if let Some(server) = self.server.as_mut() {
                            server.mark_broken();
                        }
                        None
                    }
                    Err(_) => {
                        tracing::warn!(
                            "cache: invalidation query timed out; dropping the database's entries"
                        );
                        if let Some(server) = self.server.as_mut() {
                            server.mark_broken();
                        }
                        None
                    }
                }
            }
            _ => None,
        };
        match answer {
            Some(invalidation) => {
                if let Some(state) = self.routing.as_mut().filter(|_| invalidation.lsn > 0) {
                    // The commit position is known: read-your-writes uses it too.
                    state.last_write = Some(
                        state
                            .last_write
                            .map_or(invalidation.lsn, |l| l.max(invalidation.lsn)),
                    );
                }
                cache.invalidate(&database, &invalidation);
            }
            None => cache.invalidate(&database, &cache::Invalidation::everything(u64::MAX)),
        }
    }
}

/// Whether a statement text may begin a read-only transaction: it begins with `BEGIN`
/// or `START` (comments aside) and has the word `only` somewhere. A cheap test before
/// the classifier is asked; a plain `BEGIN`, the usual one, never reaches it.
fn may_begin_read_only(sql: &[u8]) -> bool {
    crate::protocol::text::opens_with_word_or_comment(sql, &[b"begin", b"start"])
        && sql.windows(4).any(|w| w.eq_ignore_ascii_case(b"only"))
}

/// Remembers what the named statement `name` may write, within the session's bound.
fn remember_statement_writes(
    state: &mut super::caching::SessionCache,
    name: &[u8],
    writes: StatementWrites,
) {
    if state.statement_writes.len() >= MAX_STATEMENT_EFFECTS {
        state.statement_writes.clear();
    }
    state.statement_writes.insert(name.to_vec(), writes);
}

#[cfg(test)]
mod tests {
    use super::may_begin_read_only;

    #[test]
    fn only_texts_that_may_begin_a_read_only_transaction_reach_the_classifier() {
        for sql in [
            "  begin read only",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "Start Transaction Read Only",
            "/* x */ BEGIN READ ONLY",
            "-- c\nBEGIN READ ONLY",
            "BEGIN TRANSACTION READ\n  ONLY",
        ] {
            assert!(may_begin_read_only(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "BEGIN",
            "Start Transaction",
            "BEGIN READ WRITE",
            "SELECT 1",
            "SELECT * FROM only_this",
            "BEGINNING ONLY",
            "STARTS",
            "",
            "  ",
            "commit",
        ] {
            assert!(!may_begin_read_only(sql.as_bytes()), "{sql}");
        }
    }
}
