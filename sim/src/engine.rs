//! The rack side of a rollout, done by the stand-in itself: start a release's pods, probe their
//! readiness, switch the router to them, stop the old ones, and revert on its own when the
//! (scaled) readiness deadline passes. It records events as `system/k8s/…` log lines, as the real
//! rack's event forwarder does. The CLI side (waiting, printing) is in `wait.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::image::{self, Dockerfile};
use crate::logs;
use crate::manifest::{Manifest, ServiceDef};
use crate::pod::{PodSpec, Program};
use crate::procs;
use crate::router::RouterSpec;
use crate::state::{Pod, PodFaults, RackState, Release, Router};
use crate::timefmt;

/// The real rack's readiness deadline, before scaling.
pub const READINESS_DEADLINE_S: f64 = 300.0;

pub struct Engine<'a> {
    pub ctx: &'a Ctx,
    pub rack: String,
    pub app: String,
}

impl Engine<'_> {
    pub fn event(&self, object: &str, message: &str) {
        let path = self.ctx.home.app_log(&self.rack, &self.app);
        logs::append(&path, &format!("system/k8s/{object}"), message);
    }

    fn update<T>(&self, change: impl FnOnce(&mut RackState) -> Result<T>) -> Result<T> {
        self.ctx.home.update(&self.rack, change)
    }

    /// Makes sure every service with a port has a live router on its stable port.
    pub fn ensure_routers(&self, manifest: &Manifest) -> Result<()> {
        for service in manifest.services.iter().filter(|s| s.port.is_some()) {
            let existing = self.update(|s| {
                let app = s.app_mut(&self.app)?;
                Ok(app.routers.get(&service.name).cloned())
            })?;
            let port = match &existing {
                Some(router) if procs::is_ours(router.pid, &router.port.to_string()) => continue,
                Some(router) => router.port,
                None => procs::free_port()?,
            };
            let spec = RouterSpec {
                home: self.ctx.home.clone(),
                rack: self.rack.clone(),
                app: self.app.clone(),
                service: service.name.clone(),
                port,
            };
            let pid = procs::spawn_daemon(&self.ctx.home.root, &spec.to_args())?;
            self.update(|s| {
                let app = s.app_mut(&self.app)?;
                app.routers
                    .insert(service.name.clone(), Router { port, pid });
                Ok(())
            })?;
        }
        Ok(())
    }

    /// What a pod of `service` runs: manifest `command`, else a Dockerfile program found in
    /// `$CONVOX_SIM_HOME/bin`, else the light pod.
    fn program_for(&self, release: &Release, service: &ServiceDef) -> Result<Option<Program>> {
        let image_path = self.ctx.home.image_path(&self.rack, &release.build);
        let context = self.ctx.home.context_dir(&self.rack, &release.build);
        let image_bytes = std::fs::read(&image_path).ok();
        let bin = self.ctx.home.bin_dir();
        if let Some(command) = &service.command {
            if image_bytes.is_some() {
                image::unpack(&image_path, &context)?;
            }
            let cwd = if context.exists() {
                context
            } else {
                self.ctx.cwd.clone()
            };
            let path = format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            return Ok(Some(Program {
                argv: vec![
                    "/usr/bin/env".into(),
                    format!("PATH={path}"),
                    "/bin/sh".into(),
                    "-c".into(),
                    command.clone(),
                ],
                cwd,
            }));
        }
        let Some(bytes) = image_bytes else {
            return Ok(None);
        };
        let Some(dockerfile) = image::read_file(&bytes, "Dockerfile") else {
            return Ok(None);
        };
        let dockerfile = Dockerfile::parse(&String::from_utf8_lossy(&dockerfile));
        let Some((basename, args)) = dockerfile.program() else {
            return Ok(None);
        };
        let exe = bin.join(&basename);
        let executable = std::fs::metadata(&exe)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false);
        if !executable {
            return Ok(None);
        }
        image::unpack(&image_path, &context)?;
        Ok(Some(Program {
            argv: std::iter::once(exe.display().to_string())
                .chain(args)
                .collect(),
            cwd: context,
        }))
    }

    /// Environment of a pod: manifest defaults, release env, then the stand-in's own keys.
    fn pod_env(
        &self,
        region: &str,
        manifest: &Manifest,
        service: &ServiceDef,
        release: &Release,
        port: u16,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for decl in manifest.env_decls(service) {
            if let Some(default) = &decl.default {
                env.insert(decl.key.clone(), default.clone());
            }
        }
        env.extend(release.env.clone());
        for (key, value) in [
            ("PORT", port.to_string()),
            ("RELEASE", release.id.clone()),
            ("APP", self.app.clone()),
            ("SERVICE", service.name.clone()),
            ("RACK", self.rack.clone()),
            ("AWS_REGION", region.to_string()),
        ] {
            env.insert(key.into(), value);
        }
        env
    }

    /// Records and starts `count` new pods of `release` for `service`; returns their ids.
    pub fn start_pods(
        &self,
        release: &Release,
        manifest: &Manifest,
        service: &ServiceDef,
        count: u32,
        faults: &PodFaults,
    ) -> Result<Vec<String>> {
        let program = self.program_for(release, service)?;
        let region = self.ctx.home.load(&self.rack)?.region;
        let command = match (&service.command, &program) {
            (Some(command), _) => command.clone(),
            (None, Some(p)) => p.argv.join(" "),
            (None, None) => "convox sim light-pod".to_string(),
        };
        let template = pod_template_hash(&release.id);
        let mut ids = Vec::new();
        for _ in 0..count {
            let pod_id = format!("{}-{template}-{}", service.name, random_suffix());
            let port = procs::free_port()?;
            let spec = PodSpec {
                log_path: self.ctx.home.app_log(&self.rack, &self.app),
                service: service.name.clone(),
                pod: pod_id.clone(),
                port,
                release: release.id.clone(),
                error_logs: faults.error_logs,
                crash_after_s: faults.crash_after_s,
                error_interval_ms: ((200.0 * self.ctx.time_scale) as u64).clamp(1, 1000),
                program: program.clone(),
            };
            self.update(|s| {
                s.app_mut(&self.app)?.pods.push(Pod {
                    id: pod_id.clone(),
                    service: service.name.clone(),
                    release: release.id.clone(),
                    port,
                    pid: 0,
                    status: "pending".into(),
                    started_ms: timefmt::now_ms(),
                    command: command.clone(),
                    faults: faults.clone(),
                });
                Ok(())
            })?;
            self.event(
                &pod_id,
                &format!("Successfully assigned {}/{pod_id} to node-local", self.app),
            );
            let env = self.pod_env(&region, manifest, service, release, port);
            let pid = procs::spawn_daemon_with_env(&self.ctx.home.root, &spec.to_args(), &env)?;
            self.set_pod(&pod_id, |p| {
                p.pid = pid;
                p.status = "starting".into();
            })?;
            self.event(&pod_id, &format!("Started container {}", self.app));
            ids.push(pod_id);
        }
        Ok(ids)
    }

    fn set_pod(&self, pod_id: &str, change: impl FnOnce(&mut Pod)) -> Result<()> {
        self.update(|s| {
            if let Some(pod) = s
                .app_mut(&self.app)?
                .pods
                .iter_mut()
                .find(|p| p.id == pod_id)
            {
                change(pod);
            }
            Ok(())
        })
    }

    /// Probes the pods until all are ready (true) or the scaled deadline passes (false).
    pub fn await_ready(&self, pods: &[String], manifest: &Manifest) -> Result<bool> {
        let deadline = Instant::now() + self.ctx.scaled(READINESS_DEADLINE_S);
        let period = self.ctx.scaled(1.0).max(Duration::from_millis(10));
        let mut pending: Vec<String> = pods.to_vec();
        let mut failures: BTreeMap<String, u32> = BTreeMap::new();
        while !pending.is_empty() {
            let state = self.ctx.home.load(&self.rack)?;
            let app = state.app(&self.app)?;
            let mut still = Vec::new();
            for pod_id in &pending {
                let Some(pod) = app.pods.iter().find(|p| &p.id == pod_id) else {
                    continue;
                };
                let service = manifest.service(&pod.service);
                match probe(pod, service) {
                    Ok(()) => {
                        self.set_pod(pod_id, |p| p.status = "running".into())?;
                    }
                    Err(why) => {
                        let count = failures.entry(pod_id.clone()).or_default();
                        // Like kubelet, report the first failure and then every tenth.
                        if count.is_multiple_of(10) {
                            self.event(pod_id, &format!("Readiness probe failed: {why}"));
                        }
                        *count += 1;
                        still.push(pod_id.clone());
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(period);
        }
        Ok(true)
    }

    /// Stops pods and forgets them. No event: the rack's forwarder drops pod `Killing` events.
    pub fn stop_pods(&self, pod_ids: &[String]) -> Result<()> {
        let state = self.ctx.home.load(&self.rack)?;
        let app = state.app(&self.app)?;
        for pod in app.pods.iter().filter(|p| pod_ids.contains(&p.id)) {
            if procs::is_ours(pod.pid, &pod.id) {
                procs::stop_group(pod.pid, Duration::from_secs(2));
            }
        }
        self.update(|s| {
            s.app_mut(&self.app)?
                .pods
                .retain(|p| !pod_ids.contains(&p.id));
            Ok(())
        })
    }

    /// The rack's half of a promote, from `updating` to `running` on `release` or back.
    pub fn run_promote(
        &self,
        release: &Release,
        faults: &PodFaults,
        previous_status: &str,
    ) -> Result<()> {
        let manifest = Manifest::parse(&release.manifest)?;
        self.event(
            "atom/app",
            &format!("Status: {} => Pending", capitalize(previous_status)),
        );
        self.event("atom/app", "Status: Pending => Updating");
        self.ensure_routers(&manifest)?;
        let scale = self
            .ctx
            .home
            .load(&self.rack)?
            .app(&self.app)?
            .scale
            .clone();
        let mut new_pods = Vec::new();
        for service in &manifest.services {
            let count = scale
                .get(&service.name)
                .copied()
                .unwrap_or(service.count_min);
            new_pods.extend(self.start_pods(release, &manifest, service, count, faults)?);
        }
        let ready = if faults.never_ready {
            self.await_never(&new_pods)?
        } else {
            self.await_ready(&new_pods, &manifest)?
        };
        if ready {
            let old: Vec<String> = self.update(|s| {
                let app = s.app_mut(&self.app)?;
                app.release = release.id.clone();
                app.status = "running".into();
                Ok(app
                    .pods
                    .iter()
                    .filter(|p| !new_pods.contains(&p.id))
                    .map(|p| p.id.clone())
                    .collect())
            })?;
            self.event("atom/app", "Status: Updating => Running");
            self.stop_pods(&old)?;
            return Ok(());
        }
        self.event("atom/app", "Status: Updating => Deadline");
        self.update(|s| {
            s.app_mut(&self.app)?.status = "rollback".into();
            Ok(())
        })?;
        self.event("atom/app", "Status: Deadline => Rollback");
        self.stop_pods(&new_pods)?;
        // Hold `rollback` for two app-status polls so the waiting CLI sees it, as on a real rack.
        std::thread::sleep(self.ctx.scaled(10.0));
        self.update(|s| {
            s.app_mut(&self.app)?.status = "running".into();
            Ok(())
        })?;
        self.event("atom/app", "Status: Rollback => Reverted");
        Ok(())
    }

    /// `never-ready` pods run but fail every probe until the deadline.
    fn await_never(&self, pods: &[String]) -> Result<bool> {
        let deadline = Instant::now() + self.ctx.scaled(READINESS_DEADLINE_S);
        let mut reported = false;
        while Instant::now() < deadline {
            if !reported {
                for pod in pods {
                    self.event(
                        pod,
                        "Readiness probe failed: HTTP probe failed with statuscode: 503",
                    );
                }
                reported = true;
            }
            std::thread::sleep(self.ctx.scaled(1.0).max(Duration::from_millis(10)));
        }
        Ok(false)
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A k8s-like pod template hash derived from the release id (stable per release).
fn pod_template_hash(release: &str) -> String {
    let digest = image::digest(release.as_bytes());
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    digest
        .bytes()
        .skip(7)
        .take(9)
        .map(|b| alphabet[b as usize % alphabet.len()] as char)
        .collect()
}

fn random_suffix() -> String {
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| alphabet[fastrand::usize(..alphabet.len())] as char)
        .collect()
}

/// One readiness probe: an HTTP GET of the health path straight to the pod.
fn probe(pod: &Pod, service: Option<&ServiceDef>) -> std::result::Result<(), String> {
    if !procs::is_alive(pod.pid) {
        return Err("container exited".into());
    }
    let Some(service) = service.filter(|s| s.port.is_some() && !s.health_disabled) else {
        return Ok(());
    };
    let url = format!("http://127.0.0.1:{}{}", pod.port, service.health_path);
    let mut conn =
        TcpStream::connect_timeout(&([127, 0, 0, 1], pod.port).into(), Duration::from_secs(1))
            .map_err(|e| format!("Get \"{url}\": dial tcp 127.0.0.1:{}: {e}", pod.port))?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/1.29\r\nConnection: close\r\n\r\n",
        service.health_path, pod.port
    );
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let mut head = [0u8; 64];
    let n = conn
        .read(&mut head)
        .map_err(|e| format!("Get \"{url}\": {e}"))?;
    let status: u16 = String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_look_like_kubernetes_ones() {
        let hash = pod_template_hash("RABCDEFGHIJ");
        assert_eq!(hash.len(), 9);
        assert_eq!(hash, pod_template_hash("RABCDEFGHIJ"));
        assert_ne!(hash, pod_template_hash("RZZZZZZZZZZ"));
        assert_eq!(random_suffix().len(), 5);
        assert_eq!(capitalize("running"), "Running");
    }
}
