//! Integration tests: the real server, a real PostgreSQL, the generated client.

mod cluster;
mod common;
mod health;
mod ordering;
mod pull;
mod push;
mod slow_reader;
mod subscribe;
mod validation;
mod web;
