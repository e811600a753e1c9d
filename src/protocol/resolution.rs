//! One conflicting row under its collection's strategy: parses the three states, runs the
//! pure merge rules ([`super::merge`]), and checks the result like a pushed document. The
//! push decision calls it inside the store's transaction, on the states read there, so a
//! resolution is never based on a state another push has replaced since.

use serde_json::Value;

use super::merge::{self, Resolution, Side, Strategy};
use super::validate::{self, ValidRow};
use super::{Collection, Limits, ProtocolError};

/// The collection and limits a push's conflicts are resolved under.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    /// The pushed collection (its policy and schema).
    pub collection: &'a Collection,
    /// The request limits a resolved document must still meet.
    pub limits: &'a Limits,
}

/// What a conflicting row becomes.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not written; the server's state goes back as a conflict.
    Conflict {
        /// Why the strategy could not resolve it (`None`: it lost, or first-write-wins).
        why: Option<String>,
        /// An automatic strategy decided against the row: its state is a losing version.
        lost_client: bool,
    },
    /// Written as resolved.
    Write {
        /// The body to store, as text.
        body: String,
        /// Tombstone flag.
        deleted: bool,
        /// The server's state differs from the result (a losing version).
        lost_server: bool,
        /// The client's state differs from the result (a losing version).
        lost_client: bool,
    },
}

impl Resolver<'_> {
    /// The collection's strategy.
    pub fn strategy(&self) -> Strategy {
        self.collection.policy.strategy
    }

    /// Decides a row that conflicts with the server's state (`server_body`, `server_deleted`).
    pub fn decide(
        &self,
        row: &ValidRow,
        server_body: &str,
        server_deleted: bool,
    ) -> Result<Decision, ProtocolError> {
        let policy = &self.collection.policy;
        if policy.strategy == Strategy::FirstWriteWins {
            return Ok(Decision::Conflict {
                why: None,
                lost_client: false,
            });
        }
        let server = parse(server_body, "the stored body")?;
        let client = parse(&row.body, "the pushed body")?;
        let base = row
            .base()
            .map(|(b, d)| parse(b, "the assumed body").map(|v| (v, d)))
            .transpose()?;
        let resolution = merge::resolve(
            policy,
            base.as_ref().map(|(body, deleted)| Side {
                body,
                deleted: *deleted,
            }),
            Side {
                body: &server,
                deleted: server_deleted,
            },
            Side {
                body: &client,
                deleted: row.deleted,
            },
        );
        let (body, deleted) = match resolution {
            Resolution::Keep { why } => {
                let lost_client = why.is_none();
                return Ok(Decision::Conflict { why, lost_client });
            }
            Resolution::Write { body, deleted } => (body, deleted),
        };
        let lost_client = body != client || deleted != row.deleted;
        let lost_server = body != server || deleted != server_deleted;
        // The client's own bytes when its state won as sent (its number spellings included).
        let text = if lost_client {
            serde_json::to_string(&body).map_err(|e| {
                ProtocolError::internal(format!("a resolved body does not serialize: {e}"))
            })?
        } else {
            row.body.clone()
        };
        if let Err(e) =
            validate::check_resolved(self.collection, self.limits, &row.id, &text, deleted)
        {
            let e = e.trim_start_matches("new_document_state.json: ");
            return Ok(Decision::Conflict {
                why: Some(format!(
                    "the {} result is not a valid document: {e}",
                    policy.strategy.label()
                )),
                lost_client: false,
            });
        }
        Ok(Decision::Write {
            body: text,
            deleted,
            lost_server,
            lost_client,
        })
    }
}

fn parse(text: &str, what: &str) -> Result<Value, ProtocolError> {
    serde_json::from_str(text)
        .map_err(|e| ProtocolError::internal(format!("{what} is not readable JSON: {e}")))
}
