//! Every environment variable the CLI reads, in one place.

/// Path of the `convox` executable (overrides racks.toml `[convox] bin` and PATH).
pub const ACME_CONVOX: &str = "ACME_CONVOX";
/// Default for `--racks`.
pub const ACME_RACKS: &str = "ACME_RACKS";
/// Who is deploying, for the journal and lock (default: `$USER@hostname`).
pub const ACME_OWNER: &str = "ACME_OWNER";
