//! Integration tests: the real server, a real PostgreSQL, the generated client.

mod auth;
mod cluster;
mod common;
mod deadlocks;
mod durability;
mod health;
mod ordering;
mod pull;
mod push;
mod sigterm;
mod slow_reader;
mod sql_writes;
mod subscribe;
mod tls;
mod validation;
mod web;
