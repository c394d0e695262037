//! Integration tests: drive the real `acme-rollout` binary against the `convox` stand-in, three
//! racks on this machine, and check what an operator or a CI job would see.

mod harness;

mod aws;

mod deploy;
mod errors;
mod recovery;
mod rehearsal;
