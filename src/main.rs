//! `acme-rollout`: parse the command line, pick the output, run the command, and turn how it
//! ended into the exit code of the CI contract. Nothing else exits the process.
#![allow(clippy::print_stderr)]

mod cli;
mod commands;
mod config;
mod convox;
mod dns;
mod drain;
mod env;
mod manifest;
mod models;
mod outcome;
mod report;
mod rollout;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use commands::Settings;
use config::Config;
use outcome::{Failure, Outcome};
use report::Printer;
use rollout::Summary;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer::new(cli.global.output);
    let settings = Settings {
        printer: printer.clone(),
        yes: cli.global.yes || !std::io::stdin().is_terminal(),
        reason: cli.global.reason.clone(),
        owner: Settings::owner_default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Outcome::Error.into();
        }
    };
    let summary = runtime.block_on(run(cli, &settings));
    printer.summary(&summary);
    // A convox call still running after an interrupt must not hold the exit.
    runtime.shutdown_background();
    summary.outcome.into()
}

async fn run(cli: Cli, settings: &Settings) -> Summary {
    match dispatch(cli, settings).await {
        Ok(summary) => summary,
        Err(e) => failure_summary(e),
    }
}

async fn dispatch(cli: Cli, settings: &Settings) -> anyhow::Result<Summary> {
    let cfg = Config::load(&cli.global.racks).map_err(|e| {
        let hint = e.hint().map(str::to_string);
        let mut f = Failure::new(Outcome::Error, e.to_string());
        f.hint = hint;
        f
    })?;
    let ctx = commands::make_ctx(cfg, settings)?;
    let work = async {
        match cli.command {
            Command::Deploy(args) => commands::deploy(&ctx, settings, args).await,
            Command::Plan(args) => commands::plan(&ctx, settings, args).await,
            Command::Build(args) => commands::build(&ctx, settings, args).await,
            Command::Status => commands::status(&ctx, settings).await,
            Command::Rollback(args) => commands::rollback(&ctx, settings, args).await,
            Command::Lock(cmd) => commands::lock_command(&ctx, settings, cmd).await,
            Command::Dns(cli::DnsCommand::Plan) => dns::plan_command(&ctx, &settings.printer).await,
            Command::Dns(cli::DnsCommand::Apply) => {
                dns::apply_command(&ctx, &settings.printer).await
            }
            Command::Drain(args) => {
                drain::drain(
                    &ctx,
                    settings.reason.clone(),
                    drain::DrainArgs {
                        region: args.region,
                        scale_to_zero: args.scale_to_zero,
                        force: args.force,
                    },
                )
                .await
            }
            Command::Restore(args) => {
                drain::restore(&ctx, settings.reason.clone(), &args.region).await
            }
            Command::Models(cli::ModelsCommand::Push(args)) => {
                models::push(&ctx, settings, args).await
            }
            Command::Models(cli::ModelsCommand::Status) => {
                models::status(&ctx, &settings.printer).await
            }
            Command::Replication(cli::ReplicationCommand::Apply) => {
                models::replication_apply(&ctx).await
            }
        }
    };
    tokio::select! {
        result = work => result,
        _ = shutdown_signal() => rollout::engine::interrupted(&ctx).await,
    }
}

/// Ctrl-C or SIGTERM, whichever comes first.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Any error becomes a summary: typed failures keep their exit code, the rest are errors,
/// and the whole cause chain is kept on one line per cause.
fn failure_summary(e: anyhow::Error) -> Summary {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return Summary::failed(f.outcome, f.message.clone(), f.hint.clone());
    }
    let hint = e
        .chain()
        .find_map(|c| c.downcast_ref::<convox::ConvoxError>())
        .and_then(|c| c.hint());
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        message.push_str(&format!("\nCaused by: {cause}"));
    }
    Summary::failed(Outcome::Error, message, hint)
}
