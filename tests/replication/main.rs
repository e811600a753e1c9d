//! Integration tests: the real server, a real PostgreSQL, the generated client.

mod auth;
mod cluster;
mod common;
mod health;
mod ordering;
mod pull;
mod push;
mod sigterm;
mod slow_reader;
mod subscribe;
mod tls;
mod tokens;
mod validation;
mod web;
