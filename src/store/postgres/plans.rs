//! Plans that do not depend on when they were made.
//!
//! PostgreSQL plans a prepared statement afresh for its first five executions, then keeps a
//! generic plan (made without the parameters' values) whenever it looks no dearer than the
//! fresh ones, and reuses it for the life of the connection. Nothing makes it look again
//! when the table grows: only ANALYZE, VACUUM or DDL invalidate it. A pool connection that ran
//! the push's read or the page query a few times on an empty or small table (every fresh
//! deployment, before its first import) keeps plans made for a few pages: a hash join that
//! reads the whole collection to find one id, a sort of the whole collection for one page. On
//! a table just loaded with 200,000 rows that made a one-document push read the whole
//! collection (docs/performance.md, "Plan stability").
//!
//! So every pool connection plans each execution with its parameters
//! (`plan_cache_mode = force_custom_plan`): the planner then sees the table's current size and
//! the real ids. It costs PostgreSQL time on every execution: about 0.1 ms for a one-row push's
//! write, nothing for its read (which PostgreSQL was already planning afresh on an analyzed
//! table: the generic plan expects ten ids), about 0.75 ms for a 100-row push's read and write
//! (some 18% of PostgreSQL's time for it; docs/performance.md has the measurements).
//!
//! Fresh plans are not enough on a table loaded and not yet analyzed: the planner then guesses
//! that a collection holds 0.5% of the rows and a range a third of those, and reads a page's
//! few guessed rows with a bitmap scan and a sort, which sorts the whole collection when it is
//! all of the table. So the connections also take bitmap scans off the planner's table
//! (`enable_bitmapscan = off`): a page then comes from a range scan of the change index, which
//! stops at the page's end, whatever the guess, and a lookup by id from a plain index scan. No
//! statement of the store needs a bitmap scan: they read by key, by range in index order, or a
//! whole collection (a sequential scan). Statistics still matter for every estimate, so an
//! import and a re-stamp end with ANALYZE ([`PgStore::analyze_documents`]).

use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};

use super::PgStore;
use super::error::to_store_error;
use super::read::{FAST_PAGE_SQL, OWNER_FAST_PAGE_SQL, OWNER_PAGE_SQL, PAGE_SQL};
use super::read_ahead::WRITTEN_SINCE_SQL;
use super::write::{KEYED_READ_SQL, READ_SQL, UNCLAIM_SQL, WRITE_SQL};
use crate::store::StoreError;

/// Run on every new pool connection when prepared statements are cached. Without the cache
/// (a transaction-mode pooler in front) every statement is prepared anew and planned with
/// its parameters anyway, and session settings would leak to the pooler's other clients.
pub(super) const CONNECTION_SETUP_SQL: &str =
    "SET plan_cache_mode = force_custom_plan; SET enable_bitmapscan = off";

/// Executions after which PostgreSQL may switch a prepared statement to its generic plan.
const CUSTOM_RUNS: usize = 5;

/// A statement the hot path runs, with the index its plan must read through.
struct Hot {
    name: &'static str,
    sql: &'static str,
    /// Arguments as SQL text; `$c` stands for the quoted collection.
    args: &'static str,
    /// None: the statement only writes (its inserts' conflict checks use the primary key
    /// whatever the plan); it is explained, not run.
    index: Option<&'static str>,
    /// The rows must come in index order (a range scan, not a bitmap then a sort).
    ordered: bool,
    /// A partial index the statement also probes (a range scan of it, too).
    probe: Option<&'static str>,
}

/// A plan at least this dear holds a node the connection's settings disable (such a node
/// costs 1e10), chosen because nothing else could do its work; it would also be compiled
/// (`jit_above_cost`) on every execution.
const DISABLED_COST: f64 = 1e9;

const HOT: [Hot; 9] = [
    Hot {
        name: "push_read",
        sql: READ_SQL,
        args: "$c, ARRAY['plan-probe-1'], ARRAY[NULL]::text[]",
        index: Some("syncline_documents_pkey"),
        ordered: false,
        probe: None,
    },
    Hot {
        name: "keyed_push_read",
        sql: KEYED_READ_SQL,
        args: "$c, ARRAY['plan-probe-1'], ARRAY[NULL]::text[], 'plan-probe', '\\x00'::bytea",
        index: Some("syncline_documents_pkey"),
        ordered: false,
        probe: None,
    },
    Hot {
        name: "push_unclaim",
        sql: UNCLAIM_SQL,
        args: "$c, ARRAY['plan-probe-1']",
        index: Some("syncline_documents_pkey"),
        ordered: false,
        probe: None,
    },
    Hot {
        name: "page",
        sql: PAGE_SQL,
        args: "$c, 0, 0, 100, 4194304, 0",
        index: Some("syncline_documents_changes"),
        ordered: true,
        probe: None,
    },
    Hot {
        name: "owner_page",
        sql: OWNER_PAGE_SQL,
        args: "$c, 0, 0, 100, 4194304, 0, 'plan-probe-owner'",
        index: Some("syncline_documents_owner_changes"),
        ordered: true,
        probe: None,
    },
    Hot {
        name: "written_since",
        sql: WRITTEN_SINCE_SQL,
        args: "$c, 0, 1000",
        index: Some("syncline_documents_changes"),
        ordered: true,
        probe: None,
    },
    Hot {
        name: "push_write",
        sql: WRITE_SQL,
        args: "$c, ARRAY['plan-probe-1'], ARRAY['{}'], ARRAY[false], ARRAY['1-probe'], \
               ARRAY[''], '{}'::jsonb, 1, 'syncline_plan_probe', 'on', NULL, NULL, NULL, NULL, 0, 0",
        index: None,
        ordered: false,
        probe: None,
    },
    Hot {
        name: "fast_page",
        sql: FAST_PAGE_SQL,
        args: "$c, 0, 0, 100, 0",
        index: Some("syncline_documents_changes"),
        ordered: true,
        probe: Some("syncline_documents_large"),
    },
    Hot {
        name: "owner_fast_page",
        sql: OWNER_FAST_PAGE_SQL,
        args: "$c, 0, 0, 100, 0, 'plan-probe-owner'",
        index: Some("syncline_documents_owner_changes"),
        ordered: true,
        probe: Some("syncline_documents_owner_large"),
    },
];

impl PgStore {
    /// Refreshes the planner's statistics of the documents table (after an import or a
    /// re-stamp rewrote much of it). Invalidates every session's cached plans of it, too.
    pub async fn analyze_documents(&self) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        analyze(&mut conn).await.map_err(to_store_error)
    }

    /// A test and benchmark hook: one pool connection on which the hot statements are
    /// prepared, to see which plans a long-lived connection of this store keeps.
    pub async fn plan_probe(&self, collection: &str) -> Result<PlanProbe, StoreError> {
        Ok(PlanProbe {
            // Detached: its named statements must not stay behind in the pool.
            conn: self.acquire().await?.detach(),
            collection: collection.replace('\'', "''"),
        })
    }
}

/// ANALYZE of the documents table on `conn` (not in a transaction block: the statistics are
/// then visible at once). A role that does not own the table gets a warning, not an error.
pub(super) async fn analyze(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    conn.execute("ANALYZE syncline_documents").await?;
    Ok(())
}

/// One pool connection with the hot statements prepared on it (see [`PgStore::plan_probe`]).
pub struct PlanProbe {
    conn: PgConnection,
    /// The collection, quoted for an SQL string literal.
    collection: String,
}

/// How one hot statement would run now on the probe's connection.
#[derive(Debug)]
pub struct HotPlan {
    /// Which statement.
    pub name: &'static str,
    /// `EXPLAIN (FORMAT JSON)` of its next execution.
    pub plan: Value,
    /// Why the plan does not read `syncline_documents` through its index, if it does not.
    pub problem: Option<String>,
}

impl PlanProbe {
    /// Prepares every hot statement (as the store's connections do, under the same settings)
    /// and executes each past the point where PostgreSQL may settle on a generic plan.
    pub async fn prepare(&mut self) -> Result<(), StoreError> {
        for hot in &HOT {
            let prepare = format!("PREPARE syncline_probe_{} AS {}", hot.name, hot.sql);
            self.run(prepare).await?;
            let runs = if hot.index.is_some() {
                CUSTOM_RUNS + 1
            } else {
                0
            };
            for _ in 0..runs {
                let execute = format!("EXECUTE syncline_probe_{}({})", hot.name, self.args(hot));
                // Each execution ends its own implicit transaction: a push statement's marks
                // (`set_config(.., true)`) do not outlive it.
                self.run(execute).await?;
            }
        }
        Ok(())
    }

    /// The plan each hot statement's next execution would use.
    pub async fn explain(&mut self) -> Result<Vec<HotPlan>, StoreError> {
        let mut plans = Vec::with_capacity(HOT.len());
        for hot in &HOT {
            let explain = format!(
                "EXPLAIN (FORMAT JSON) EXECUTE syncline_probe_{}({})",
                hot.name,
                self.args(hot)
            );
            let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
                .fetch_one(&mut self.conn)
                .await
                .map_err(to_store_error)?;
            let problem = check(&plan, hot);
            plans.push(HotPlan {
                name: hot.name,
                plan,
                problem,
            });
        }
        Ok(plans)
    }

    /// Closes the probe's connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }

    fn args(&self, hot: &Hot) -> String {
        hot.args.replace("$c", &format!("'{}'", self.collection))
    }

    async fn run(&mut self, sql: String) -> Result<(), StoreError> {
        self.conn
            .execute(sqlx::AssertSqlSafe(sql))
            .await
            .map_err(to_store_error)?;
        Ok(())
    }
}

/// Every read of `syncline_documents` in `plan` must go through `hot.index` (a range scan of
/// it when `hot.ordered`), or `hot.probe`, and one at least through `hot.index`; the write
/// nodes themselves (ModifyTable) read nothing. No node may be one the settings disable.
fn check(plan: &Value, hot: &Hot) -> Option<String> {
    let cost = plan[0]["Plan"]["Total Cost"].as_f64().unwrap_or(f64::MAX);
    if cost >= DISABLED_COST {
        return Some(format!("the plan costs {cost:e}: it holds a disabled node"));
    }
    let mut reads = Vec::new();
    collect(plan, &mut reads);
    let Some(expected) = hot.index else {
        return (!reads.is_empty()).then(|| "a write-only statement reads the table".into());
    };
    if reads.is_empty() {
        return Some("no node reads syncline_documents".into());
    }
    let mut through_index = false;
    for node in reads {
        let kind = node["Node Type"].as_str().unwrap_or("?");
        let index = match kind {
            "Index Scan" | "Index Only Scan" => node["Index Name"].as_str(),
            "Bitmap Heap Scan" if !hot.ordered => node["Plans"]
                .as_array()
                .and_then(|children| children.first())
                .and_then(|child| child["Index Name"].as_str()),
            _ => None,
        };
        through_index |= index == Some(expected);
        if index != Some(expected) && (index.is_none() || index != hot.probe) {
            return Some(format!(
                "{kind} on syncline_documents{}, not a scan of {expected}",
                index.map(|i| format!(" using {i}")).unwrap_or_default(),
            ));
        }
    }
    (!through_index).then(|| format!("no node reads through {expected}"))
}

/// The plan nodes that read `syncline_documents`.
fn collect<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
        Value::Object(map) => {
            if map.get("Relation Name").and_then(Value::as_str) == Some("syncline_documents")
                && map.get("Node Type").and_then(Value::as_str) != Some("ModifyTable")
            {
                out.push(value);
            }
            map.values().for_each(|v| collect(v, out));
        }
        _ => {}
    }
}
