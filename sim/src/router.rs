//! The per-service router (`convox sim router …`, hidden): a long-lived TCP proxy on the service's
//! stable loopback port. For every connection it re-reads the rack state and picks, round robin, a
//! ready live pod of the app's active release. This is also where the `unhealthy` fault (answer 503
//! to everything) and the `slow-health` fault (delay every response) act, because the router knows
//! which release a backend belongs to. No backend, or a dead one, gives `502 Bad Gateway`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Context, Result};
use crate::pod::{read_request_head, write_response};
use crate::state::{Home, PodFaults};

#[derive(Debug, Clone)]
pub struct RouterSpec {
    pub home: Home,
    pub rack: String,
    pub app: String,
    pub service: String,
    pub port: u16,
}

impl RouterSpec {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "sim".into(),
            "router".into(),
            "--rack".into(),
            self.rack.clone(),
            "--app".into(),
            self.app.clone(),
            "--service".into(),
            self.service.clone(),
            "--port".into(),
            self.port.to_string(),
        ]
    }
}

/// A backend chosen for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub port: u16,
    pub faults: PodFaults,
}

/// Ready, live pods of the active release for the service.
pub fn backends(spec: &RouterSpec) -> Option<Vec<Backend>> {
    let state = spec.home.load(&spec.rack).ok()?;
    let app = state.apps.get(&spec.app)?;
    Some(
        app.pods
            .iter()
            .filter(|p| {
                p.service == spec.service
                    && p.release == app.release
                    && p.status == "running"
                    && crate::procs::is_alive(p.pid)
            })
            .map(|p| Backend {
                port: p.port,
                faults: p.faults.clone(),
            })
            .collect(),
    )
}

pub fn run_router(spec: RouterSpec) -> Result<()> {
    crate::procs::detach_from_caller();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The port was free when it was allocated; a previous router may still be letting go of it.
    let listener = loop {
        match TcpListener::bind(("127.0.0.1", spec.port)) {
            Ok(listener) => break listener,
            Err(e) if Instant::now() > deadline => {
                return Err(e).context(|| format!("binding router port 127.0.0.1:{}", spec.port))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if !spec.home.rack_dir(&spec.rack).join("state.json").exists() {
            // The rack was deleted under us: nothing left to route for.
            return Ok(());
        }
        let (spec, next) = (Arc::clone(&spec), Arc::clone(&next));
        std::thread::spawn(move || handle(conn, &spec, &next));
    }
    Ok(())
}

fn handle(mut client: TcpStream, spec: &RouterSpec, next: &AtomicUsize) {
    let list = backends(spec).unwrap_or_default();
    if list.is_empty() {
        if read_request_head(&mut client).is_some() {
            write_response(
                &mut client,
                "502 Bad Gateway",
                "{\"error\":\"no ready pods\"}",
            );
        }
        return;
    }
    let backend = &list[next.fetch_add(1, Ordering::Relaxed) % list.len()];
    if backend.faults.unhealthy {
        if read_request_head(&mut client).is_some() {
            write_response(
                &mut client,
                "503 Service Unavailable",
                "{\"status\":\"unhealthy\"}",
            );
        }
        return;
    }
    if backend.faults.slow_ms > 0 {
        std::thread::sleep(Duration::from_millis(backend.faults.slow_ms));
    }
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", backend.port)) else {
        if read_request_head(&mut client).is_some() {
            write_response(
                &mut client,
                "502 Bad Gateway",
                "{\"error\":\"upstream refused the connection\"}",
            );
        }
        return;
    };
    let (Ok(mut client_reader), Ok(mut upstream_writer)) =
        (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let uplink = std::thread::spawn(move || {
        copy_all(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(Shutdown::Write);
    });
    copy_all(&mut upstream, &mut client);
    let _ = client.shutdown(Shutdown::Both);
    let _ = uplink.join();
}

fn copy_all(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
