//! The result cache's verdict on a read in a session: its relation and function names
//! (from the `cache` room's parser) put to the catalog on the session's own server
//! connection, so its `search_path` and role apply, and memoized per database, role,
//! settings and text.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::session::Session;
use crate::cache::{self, Analysis};

impl Session {
    /// The catalog's verdict on `sql` for this role and settings (memoized).
    pub(super) async fn analyse(&mut self, sql: &Bytes, may_ask: bool) -> Option<Arc<Analysis>> {
        let cache = self.runtime.cache.clone();
        let mut memo = BytesMut::new();
        for part in [
            self.identity.database.as_bytes(),
            self.identity.user.as_bytes(),
        ] {
            memo.extend_from_slice(&(part.len() as u32).to_be_bytes());
            memo.extend_from_slice(part);
        }
        memo.extend_from_slice(&self.settings.hash().to_be_bytes());
        memo.extend_from_slice(sql);
        let memo = memo.freeze();
        if let Some(analysis) = cache.analysis(&memo) {
            return Some(analysis);
        }
        if !may_ask {
            return None;
        }
        let text = crate::protocol::text::lossy(sql);
        let (fingerprint, _) = crate::stats::fingerprint::fingerprint(&text);
        let mut key = None;
        let verdict = match cache::read_names(&text) {
            Err(why) => Err(why.to_string()),
            Ok(names) => {
                let config = self.runtime.config();
                let question = cache::catalog::read_question(
                    &names.relations,
                    &names.functions,
                    &config.cache.never,
                    names.key.as_ref(),
                );
                let answer = self.catalog_answer(&question).await?;
                if answer
                    .as_ref()
                    .is_ok_and(|a| cache::catalog::key_confirmed(a))
                {
                    key = names.key;
                }
                let mut verdict = answer
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|a| cache::catalog::read_verdict(a));
                if let (Ok(_), Ok(answer)) = (&verdict, &answer) {
                    // Functions the views and row security policies call (pg_depend
                    // leaves built-ins out), each list asked about on its own.
                    match cache::catalog::functions_called(answer) {
                        Err(why) => verdict = Err(why),
                        Ok(callers) => {
                            for (caller, functions) in callers {
                                if functions.is_empty() {
                                    continue;
                                }
                                let question = cache::catalog::functions_question(&functions);
                                if let Err(why) = self
                                    .catalog_answer(&question)
                                    .await?
                                    .and_then(|a| cache::catalog::functions_verdict(&a, caller))
                                {
                                    verdict = Err(why);
                                    break;
                                }
                            }
                        }
                    }
                }
                verdict.map(Vec::into_boxed_slice)
            }
        };
        let analysis = Arc::new(Analysis {
            verdict,
            key,
            fingerprint,
        });
        cache.remember_analysis(memo, analysis.clone());
        Some(analysis)
    }

    /// Runs a catalog question on the attached server. `None` when the server failed
    /// (it is released); `Some(Err)` when the question itself failed.
    async fn catalog_answer(
        &mut self,
        question: &str,
    ) -> Option<Result<Vec<Option<String>>, String>> {
        let server = self.server.as_mut()?;
        match server.query_values(question).await {
            Ok(answer) => Some(Ok(answer)),
            Err(crate::pool::PoolError::Unhealthy(message)) => {
                Some(Err(format!("catalog check failed: {message}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache: catalog check failed");
                self.server_failed();
                None
            }
        }
    }
}
