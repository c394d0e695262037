//! `convox`: a local stand-in for the Convox v3 CLI. This file only hands argv to the command
//! table; see `cmd/` for commands and the other modules for state, processes and faults.

mod args;
mod cmd;
mod ctx;
mod dockerignore;
mod engine;
mod error;
mod faults;
mod filter;
mod image;
mod logs;
mod manifest;
mod pod;
mod procs;
mod promote;
mod router;
mod state;
mod table;
mod timefmt;
mod wait;

fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    std::process::ExitCode::from(cmd::run(&argv) as u8)
}
