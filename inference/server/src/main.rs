//! `acme-infer`: read the settings from the environment, bind the port at once (so probes
//! see 503 while the model loads), load the model in the background, serve until SIGTERM,
//! then drain in-flight requests within the grace period and exit 0. An `s3://` model is
//! fetched into the cache first (`/health` says how far the download has got).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use server::api::log_line;
use server::s3_fetch::{fetch_model, ModelCache};
use server::{app, AppState, Config, ModelSource, S3Object, ServerSettings};
use tokio::net::TcpListener;
use tokio::sync::watch;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("acme-infer: {error}");
            return ExitCode::from(2);
        }
    };
    let plan = match &config.model {
        ModelSource::File(path) => {
            if !path.is_file() {
                eprintln!(
                    "acme-infer: MODEL_PATH: {} does not exist or is not a file; set MODEL_PATH to the model's .gguf file",
                    path.display()
                );
                return ExitCode::from(2);
            }
            LoadPlan::File(path.clone())
        }
        ModelSource::S3(object) => match ModelCache::open(config.model_cache_dir.as_deref()) {
            Ok(cache) => LoadPlan::S3(object.clone(), cache),
            Err(why) => {
                eprintln!("acme-infer: {why}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // The executor only parses, tokenizes and relays; the model runs on its own threads.
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("acme-infer: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(serve(config, plan));
    // A model load still running must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// Where the model file comes from, with what that needs already checked.
enum LoadPlan {
    File(PathBuf),
    S3(S3Object, ModelCache),
}

async fn serve(config: Config, plan: LoadPlan) -> ExitCode {
    let state = AppState::new(ServerSettings::from(&config));
    let listener = match TcpListener::bind(("0.0.0.0", config.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "acme-infer: cannot listen on port {} ({error}); set PORT to a free port",
                config.port
            );
            return ExitCode::FAILURE;
        }
    };
    let source = match &plan {
        LoadPlan::File(path) => path.display().to_string(),
        LoadPlan::S3(object, _) => object.to_string(),
    };
    log_line(&format!(
        "acme-infer {} listening on 0.0.0.0:{}, loading {source}",
        env!("CARGO_PKG_VERSION"),
        config.port,
    ));

    let mut loader = tokio::spawn(fetch_and_load(
        state.clone(),
        plan,
        config.model_sha256.clone(),
    ));

    let (draining_tx, mut draining_rx) = watch::channel(false);
    let shutdown_state = state.clone();
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(async move {
        terminate_signal().await;
        shutdown_state.start_draining();
        log_line("SIGTERM received: draining in-flight requests");
        let _ = draining_tx.send(true);
    });
    let mut server = tokio::spawn(async move { server.await });
    let grace = config.shutdown_grace;
    let grace_over = async move {
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(grace_over);

    let mut loading = true;
    loop {
        tokio::select! {
            loaded = &mut loader, if loading => {
                loading = false;
                match loaded {
                    Ok(Ok(())) => {
                        if let Some(ready) = state.ready() {
                            let id = &ready.identity;
                            log_line(&format!(
                                "model ready: {} ({}, {}, {}) sha256 {}",
                                id.model, id.architecture, id.weight_format, id.activation, id.sha256
                            ));
                        }
                    }
                    Ok(Err(message)) => {
                        log_line(&format!("ERROR {message}"));
                        return ExitCode::FAILURE;
                    }
                    Err(panic) => {
                        log_line(&format!("ERROR the model loader crashed: {panic}"));
                        return ExitCode::FAILURE;
                    }
                }
            }
            served = &mut server => {
                return match served {
                    Ok(Ok(())) => {
                        log_line("drained; exiting");
                        ExitCode::SUCCESS
                    }
                    Ok(Err(error)) => {
                        log_line(&format!("ERROR the HTTP server failed: {error}"));
                        ExitCode::FAILURE
                    }
                    Err(panic) => {
                        log_line(&format!("ERROR the HTTP server crashed: {panic}"));
                        ExitCode::FAILURE
                    }
                };
            }
            () = &mut grace_over => {
                log_line(&format!(
                    "shutdown grace period of {}s is over; exiting with requests still running",
                    grace.as_secs()
                ));
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// Fetches an S3 model into the cache if needed, then loads it (off the executor), refusing
/// a file whose SHA-256 is not the pinned or verified one.
async fn fetch_and_load(
    state: AppState,
    plan: LoadPlan,
    pinned: Option<String>,
) -> Result<(), String> {
    let (path, expected) = match plan {
        LoadPlan::File(path) => (path, pinned),
        LoadPlan::S3(object, cache) => {
            let fetched = fetch_model(&object, pinned.as_deref(), &cache, state.download()).await?;
            log_line(&format!(
                "{} {object} as {} (sha256 {})",
                if fetched.downloaded {
                    "downloaded"
                } else {
                    "model cache hit: using cached"
                },
                fetched.path.display(),
                fetched.sha256
            ));
            (fetched.path, Some(fetched.sha256))
        }
    };
    tokio::task::spawn_blocking(move || state.load_model_expecting(&path, expected.as_deref()))
        .await
        .map_err(|panic| format!("the model loader crashed: {panic}"))?
}

/// Resolves on SIGTERM (what Convox and Docker send) or Ctrl-C.
async fn terminate_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
