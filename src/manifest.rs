//! The Convox manifest: reads `templates/convox.yml`, checks it against `racks.toml` (the
//! service the rollout gates exists, exposes a port, is health-checked on the path the bake
//! checks, declares the per-region model variables), and renders the manifest that goes into the
//! build context. Problems are found here, before a run starts, not half-way through a build.
//!
//! YAML goes through `serde_yaml_ng`: `serde_yaml` is unmaintained upstream, and of its forks
//! this one keeps serde_yaml's API (`Value`, `Mapping` in document order, `from_str`/`to_string`)
//! and is released regularly; the convox stand-in parses manifests with it too.

use anyhow::{anyhow, Context, Result};
use serde_yaml_ng::{Mapping, Value};

use crate::config::Config;

/// The variables each region sets on its own release (`convox env set`), so the manifest must
/// declare them without a default that would point every region at one place.
const PER_REGION_ENV: [&str; 2] = ["MODEL_PATH", "MODEL_SHA256"];

/// Reads the template named by `[app] manifest` and renders it.
pub fn render(cfg: &Config) -> Result<String> {
    let path = &cfg.app.manifest;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the manifest template {} (racks.toml [app] manifest)",
            path.display()
        )
    })?;
    render_text(cfg, &text).with_context(|| format!("manifest template {}", path.display()))
}

/// Checks and renders a template's text; errors say what to change in the template.
pub fn render_text(cfg: &Config, text: &str) -> Result<String> {
    let mut root: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| anyhow!("not valid YAML: {e}; fix the syntax at that place"))?;
    let top = root
        .as_mapping_mut()
        .ok_or_else(|| anyhow!("the top level must be a mapping with a `services:` key"))?;
    let env = declared_env(top)?;
    let service_name = &cfg.app.service;
    let service = top
        .get_mut("services")
        .and_then(Value::as_mapping_mut)
        .and_then(|s| s.get_mut(service_name.as_str()))
        .and_then(Value::as_mapping_mut)
        .ok_or_else(|| {
            anyhow!(
                "no service `{service_name}` under `services:`; racks.toml [app] service names it, \
                 so add it to the manifest or change [app] service"
            )
        })?;
    if service.get("port").is_none() {
        return Err(anyhow!(
            "services.{service_name} has no `port:`; the service must listen on one (e.g. `port: 8080`) for health checks and DNS"
        ));
    }
    check_health_path(cfg, service_name, service)?;
    if cfg.models.is_some() {
        for key in PER_REGION_ENV {
            match env.iter().find(|(k, _)| k == key) {
                None => {
                    return Err(anyhow!(
                        "`environment:` does not declare {key}; racks.toml [models] pins each region's model through it, so add `- {key}`"
                    ))
                }
                Some((_, Some(default))) => {
                    return Err(anyhow!(
                        "`environment:` gives {key} the default `{default}`; each region sets its own (its regional bucket), so declare it as `- {key}` without a value"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    if service.get("build").is_none() {
        service.insert("build".into(), ".".into());
    }
    let body = serde_yaml_ng::to_string(&root).context("cannot write the rendered manifest")?;
    Ok(format!(
        "# rendered by acme-rollout from {}; edit that file, not this one\n{body}",
        cfg.app
            .manifest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// `environment:` entries as (KEY, default): `- KEY` or `- KEY=default`.
fn declared_env(top: &Mapping) -> Result<Vec<(String, Option<String>)>> {
    let Some(list) = top.get("environment") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_sequence()
        .ok_or_else(|| anyhow!("`environment:` must be a list of `KEY` or `KEY=default`"))?;
    list.iter()
        .map(|entry| {
            let s = entry.as_str().ok_or_else(|| {
                anyhow!("`environment:` entries must be strings like `KEY` or `KEY=default`")
            })?;
            Ok(match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (s.to_string(), None),
            })
        })
        .collect()
}

/// Convox's own readiness check and the bake's health gate must look at the same endpoint, or a
/// release can pass one and fail the other.
fn check_health_path(cfg: &Config, service_name: &str, service: &Mapping) -> Result<()> {
    let manifest_path = match service.get("health") {
        None => return Ok(()),
        Some(Value::String(p)) => p.clone(),
        Some(Value::Mapping(m)) => match m.get("path") {
            Some(Value::String(p)) => p.clone(),
            None => return Ok(()),
            Some(_) => {
                return Err(anyhow!(
                    "services.{service_name}.health.path must be a path like /health"
                ))
            }
        },
        Some(_) => {
            return Err(anyhow!(
                "services.{service_name}.health must be a path or a mapping with `path:`"
            ))
        }
    };
    for rack in &cfg.racks {
        if let Some(gate) = &rack.bake.health {
            if gate.path != manifest_path {
                return Err(anyhow!(
                    "services.{service_name}.health.path is {manifest_path} but rack {}'s bake checks {}; make racks.toml [bake.health] path and the manifest agree",
                    rack.name,
                    gate.path
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(models: bool) -> Config {
        let mut text = String::from(
            r#"
[app]
name = "inference"
service = "inference"
source = "inference"
manifest = "templates/convox.yml"
[bake]
duration = "1s"
[bake.health]
path = "/health"
[[rack]]
name = "us-prod"
region = "us-east-1"
bucket = "b-use1"
[[wave]]
name = "all"
racks = ["us-prod"]
"#,
        );
        if models {
            text.push_str(
                "[models]\nbucket = \"b-use1\"\nregion = \"us-east-1\"\nname = \"m.gguf\"\n",
            );
        }
        Config::parse(Path::new("racks.toml"), &text).expect("test config parses")
    }

    const TEMPLATE: &str = include_str!("../templates/convox.yml");

    #[test]
    fn the_shipped_template_renders_and_keeps_its_settings() {
        let out = render_text(&config(true), TEMPLATE).unwrap();
        assert!(out.starts_with("# rendered by acme-rollout"));
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        let svc = &v["services"]["inference"];
        assert_eq!(svc["port"], Value::from(8080));
        assert_eq!(svc["scale"]["count"], Value::from("2-6"));
        assert_eq!(svc["scale"]["targets"]["cpu"], Value::from(70));
        assert_eq!(
            svc["nodeSelectorLabels"]["convox.io/label"],
            Value::from("inference")
        );
        let env: Vec<&str> = v["environment"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"MODEL_PATH") && env.contains(&"INFERENCE_THREADS=2"));
    }

    #[test]
    fn a_missing_service_names_the_fix() {
        let err = render_text(&config(false), "services:\n  web:\n    port: 80\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("no service `inference`"), "{msg}");
        assert!(msg.contains("[app] service"), "{msg}");
    }

    #[test]
    fn broken_yaml_names_the_line() {
        let err =
            render_text(&config(false), "services:\n  inference:\n   port: [8080\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn a_model_path_default_is_refused_when_regions_pin_their_own() {
        let t = "environment:\n  - MODEL_PATH=/m.gguf\n  - MODEL_SHA256\nservices:\n  inference:\n    port: 8080\n";
        let msg = format!("{:#}", render_text(&config(true), t).unwrap_err());
        assert!(
            msg.contains("MODEL_PATH") && msg.contains("without a value"),
            "{msg}"
        );
        let t = "services:\n  inference:\n    port: 8080\n";
        let msg = format!("{:#}", render_text(&config(true), t).unwrap_err());
        assert!(msg.contains("does not declare MODEL_PATH"), "{msg}");
        assert!(render_text(&config(false), t).is_ok());
    }

    #[test]
    fn health_paths_must_agree() {
        let t = "services:\n  inference:\n    port: 8080\n    health: /healthz\n";
        let msg = format!("{:#}", render_text(&config(false), t).unwrap_err());
        assert!(msg.contains("/healthz") && msg.contains("/health"), "{msg}");
    }

    #[test]
    fn build_defaults_to_the_context_root() {
        let out = render_text(&config(false), "services:\n  inference:\n    port: 8080\n").unwrap();
        let v: Value = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(v["services"]["inference"]["build"], Value::from("."));
    }
}
