//! Steward's integration suite: one binary, real services only — the model
//! server (SmolLM2 on llama.cpp), SQLite files and a PostgreSQL server —
//! with Steward spawned in process on a free port per test.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker;
mod checkpoints;
mod helpers;
mod scripted_server;

mod adversarial;
mod auth;
mod backpressure;
mod bad_input;
mod browser;
mod chat;
mod console;
mod constitution;
mod container;
mod contracts;
mod dashboards;
mod evasion;
mod events;
mod fuzz;
mod guard;
mod instances;
mod limits;
mod moderation;
mod moderation_eval;
mod moderation_train;
mod moderations;
mod openai;
mod openai_tools;
mod ops;
mod orchestrator;
mod recordings;
mod registry;
mod relay_faults;
mod scripted;
mod semantic;
mod shutdown;
mod socket;
mod storage;
mod tracing;
mod training;
mod upstreams;
