//! Integration tests: the real server, a real PostgreSQL, the generated client.

mod auth;
mod checkpoints;
mod cluster;
mod common;
mod connections;
mod deadlocks;
mod durability;
mod error_details;
mod health;
mod inputs;
mod memory_bounds;
mod notifications;
mod ordering;
mod per_row_push;
mod pull;
mod push;
mod sigterm;
mod slow_reader;
mod sql_writes;
mod subscribe;
mod tls;
mod tokens;
mod validation;
mod web;
mod wire_limits;
