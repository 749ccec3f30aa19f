//! The adversarial suite (issue 19): each attack a review found, made against
//! the running service with the real services, and shown to fail harmlessly.

mod bodies;
mod keys;
mod policy;
mod routes;
mod shutdown;
mod sockets;
mod verdicts;
