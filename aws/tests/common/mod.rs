//! Shared by the moto-backed test binaries: one moto server per test binary.

use std::sync::OnceLock;

use acme_aws::testing::Moto;

/// The moto server of this test binary, started on first use. It exits with the test process.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start().unwrap_or_else(|err| panic!("{err}")))
}
