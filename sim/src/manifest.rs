//! The parts of `convox.yml` the stand-in acts on: app-level and service `environment`, and per
//! service `port`, `health`, `scale` (count and targets), `command` and `internal`. Accepts the same
//! shapes the real manifest loader does (`port: 8080 | "http:8080"`, `health: /path | {path: …}`,
//! `scale: N | {count: N | "N" | "min-max" | {min, max}}`).

use serde_yaml_ng::Value;

use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDecl {
    pub key: String,
    /// `KEY=default`; `None` means the key is required.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub name: String,
    pub port: Option<u16>,
    pub health_path: String,
    pub health_disabled: bool,
    pub count_min: u32,
    pub count_max: u32,
    pub target_cpu: Option<u64>,
    pub target_memory: Option<u64>,
    /// Millicores requested (`scale.cpu`, default 250).
    pub cpu: u64,
    /// MiB requested (`scale.memory`, default 512).
    pub memory: u64,
    pub command: Option<String>,
    pub internal: bool,
    pub environment: Vec<EnvDecl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub environment: Vec<EnvDecl>,
    /// Sorted by name.
    pub services: Vec<ServiceDef>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest> {
        let root: Value = serde_yaml_ng::from_str(text).map_err(|e| crate::fail!("yaml: {e}"))?;
        let root = match root {
            Value::Null => return Ok(Manifest::default()),
            Value::Mapping(_) => root,
            _ => crate::bail!("yaml: convox.yml must be a mapping with a services: key"),
        };
        let environment = parse_env(root.get("environment"), "environment")?;
        let mut services = Vec::new();
        if let Some(list) = root.get("services") {
            let map = list.as_mapping().ok_or_else(|| {
                crate::fail!("yaml: services: must be a mapping of service names")
            })?;
            for (name, body) in map {
                let name = name
                    .as_str()
                    .ok_or_else(|| crate::fail!("yaml: service names must be strings"))?;
                services.push(parse_service(name, body)?);
            }
        }
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Manifest {
            environment,
            services,
        })
    }

    pub fn service(&self, name: &str) -> Option<&ServiceDef> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Every env key a service sees with its default, app-level first then service-level.
    pub fn env_decls<'a>(&'a self, service: &'a ServiceDef) -> impl Iterator<Item = &'a EnvDecl> {
        self.environment.iter().chain(service.environment.iter())
    }
}

fn parse_env(value: Option<&Value>, place: &str) -> Result<Vec<EnvDecl>> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let list = value
        .as_sequence()
        .ok_or_else(|| crate::fail!("yaml: {place} must be a list of KEY or KEY=default"))?;
    list.iter()
        .map(|item| {
            let text = scalar_text(item).ok_or_else(|| {
                crate::fail!("yaml: {place} entries must be strings like KEY=default")
            })?;
            Ok(match text.split_once('=') {
                Some((k, v)) => EnvDecl {
                    key: k.to_string(),
                    default: Some(v.to_string()),
                },
                None => EnvDecl {
                    key: text,
                    default: None,
                },
            })
        })
        .collect()
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_service(name: &str, body: &Value) -> Result<ServiceDef> {
    let place = format!("services.{name}");
    let port = match body.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(port_number(&n.to_string(), &place)?),
        Some(Value::String(s)) => {
            let number = s.rsplit(':').next().unwrap_or(s);
            Some(port_number(number, &place)?)
        }
        Some(Value::Mapping(_)) => {
            let number = body
                .get("port")
                .and_then(|p| p.get("port"))
                .and_then(scalar_text)
                .ok_or_else(|| crate::fail!("yaml: {place}.port: needs port:"))?;
            Some(port_number(&number, &place)?)
        }
        Some(_) => crate::bail!("yaml: {place}.port: must be a number like 8080 or \"http:8080\""),
    };
    let (health_path, health_disabled) = match body.get("health") {
        None | Some(Value::Null) => ("/".to_string(), false),
        Some(Value::String(path)) => (path.clone(), false),
        Some(h @ Value::Mapping(_)) => (
            h.get("path")
                .and_then(scalar_text)
                .unwrap_or_else(|| "/".into()),
            h.get("disable").and_then(Value::as_bool).unwrap_or(false),
        ),
        Some(_) => crate::bail!("yaml: {place}.health: must be a path or a mapping with path:"),
    };
    let scale_value = |key: &str| {
        body.get("scale")
            .and_then(|s| s.get(key))
            .and_then(Value::as_u64)
    };
    let (cpu, memory) = (
        scale_value("cpu").unwrap_or(250),
        scale_value("memory").unwrap_or(512),
    );
    let (count_min, count_max, target_cpu, target_memory) = match body.get("scale") {
        None | Some(Value::Null) => (1, 1, None, None),
        Some(Value::Number(n)) => {
            let count = count_number(&n.to_string(), &place)?;
            (count, count, None, None)
        }
        Some(scale @ Value::Mapping(_)) => {
            let (min, max) = match scale.get("count") {
                None | Some(Value::Null) => (1, 1),
                Some(count) => parse_count(count, &place)?,
            };
            let targets = scale.get("targets");
            let target = |key: &str| targets.and_then(|t| t.get(key)).and_then(Value::as_u64);
            (min, max, target("cpu"), target("memory"))
        }
        Some(_) => crate::bail!("yaml: {place}.scale: must be a count or a mapping with count:"),
    };
    if count_max < count_min {
        crate::bail!("yaml: {place}.scale.count: max {count_max} is below min {count_min}");
    }
    let command = match body.get("command") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Sequence(parts)) => Some(
            parts
                .iter()
                .filter_map(scalar_text)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Some(_) => crate::bail!("yaml: {place}.command: must be a string"),
    };
    Ok(ServiceDef {
        name: name.to_string(),
        port,
        health_path,
        health_disabled,
        count_min,
        count_max,
        target_cpu,
        target_memory,
        cpu,
        memory,
        command,
        internal: body
            .get("internal")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        environment: parse_env(body.get("environment"), &format!("{place}.environment"))?,
    })
}

fn port_number(text: &str, place: &str) -> Result<u16> {
    text.trim()
        .parse::<u16>()
        .map_err(|_| crate::fail!("yaml: {place}.port: invalid port \"{text}\""))
}

fn count_number(text: &str, place: &str) -> Result<u32> {
    text.trim().parse::<u32>().map_err(|_| {
        crate::fail!("yaml: {place}.scale.count: strconv.Atoi: parsing \"{text}\": invalid syntax")
    })
}

fn parse_count(value: &Value, place: &str) -> Result<(u32, u32)> {
    match value {
        Value::Number(n) => {
            let c = count_number(&n.to_string(), place)?;
            Ok((c, c))
        }
        Value::String(s) => match s.split_once('-') {
            Some((min, max)) => Ok((count_number(min, place)?, count_number(max, place)?)),
            None => {
                let c = count_number(s, place)?;
                Ok((c, c))
            }
        },
        Value::Mapping(_) => {
            let min = value
                .get("min")
                .and_then(scalar_text)
                .unwrap_or_else(|| "1".into());
            let max = value
                .get("max")
                .and_then(scalar_text)
                .unwrap_or_else(|| min.clone());
            Ok((count_number(&min, place)?, count_number(&max, place)?))
        }
        _ => crate::bail!("yaml: {place}.scale.count: must be N, \"min-max\" or {{min, max}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFERENCE: &str = "
environment:
  - MODEL_ID
  - LOG_LEVEL=info
services:
  inference:
    build: .
    port: 8080
    health:
      path: /health
      interval: 5
    scale:
      count: 2-6
      targets:
        cpu: 70
";

    #[test]
    fn inference_manifest_is_understood() {
        let m = Manifest::parse(INFERENCE).unwrap();
        let s = m.service("inference").unwrap();
        assert_eq!(s.port, Some(8080));
        assert_eq!(s.health_path, "/health");
        assert_eq!((s.count_min, s.count_max), (2, 6));
        assert_eq!(s.target_cpu, Some(70));
        assert_eq!(
            m.environment[0],
            EnvDecl {
                key: "MODEL_ID".into(),
                default: None
            }
        );
        assert_eq!(m.environment[1].default.as_deref(), Some("info"));
    }

    #[test]
    fn other_shapes_of_port_health_and_scale() {
        let m = Manifest::parse(
            "services:\n  web:\n    port: https:8443\n    health: /ok\n    scale: 3\n  api:\n    scale:\n      count: {min: 1, max: 4}\n",
        )
        .unwrap();
        let web = m.service("web").unwrap();
        assert_eq!(
            (web.port, web.health_path.as_str(), web.count_min),
            (Some(8443), "/ok", 3)
        );
        let api = m.service("api").unwrap();
        assert_eq!(
            (
                api.port,
                api.count_min,
                api.count_max,
                api.health_path.as_str()
            ),
            (None, 1, 4, "/")
        );
        assert_eq!(m.services[0].name, "api");
    }

    #[test]
    fn broken_manifests_name_the_place() {
        assert!(Manifest::parse("services: [")
            .unwrap_err()
            .0
            .starts_with("yaml: "));
        assert_eq!(
            Manifest::parse("services:\n  web:\n    scale:\n      count: 2+\n")
                .unwrap_err()
                .0,
            "yaml: services.web.scale.count: strconv.Atoi: parsing \"2+\": invalid syntax"
        );
        assert!(Manifest::parse("services:\n  web:\n    port: lots\n")
            .unwrap_err()
            .0
            .contains("services.web.port"));
    }
}
