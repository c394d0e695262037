//! Integration tests: drive the real binaries against the convox stand-in.
