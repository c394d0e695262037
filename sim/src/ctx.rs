//! Everything a command needs from its surroundings, resolved the way the real CLI does: the state
//! root and time scale from the environment, the rack (`-r`, `CONVOX_RACK`, `.convox/rack`, matched
//! exactly or by unique substring), the app (`-a`, `.convox/app`, the cwd's name), and where
//! progress output goes (stderr under `--id`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::Parsed;
use crate::error::Result;
use crate::faults::{self, FaultKind};
use crate::state::Home;

pub const HOME_VAR: &str = "CONVOX_SIM_HOME";
pub const SCALE_VAR: &str = "CONVOX_SIM_TIME_SCALE";

/// Where progress lines go: stdout normally, stderr when `--id` keeps stdout for the id alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct Out {
    pub to_stderr: bool,
}

impl Out {
    pub fn write(&self, text: &str) {
        let _ = self.try_write(text);
    }

    /// Like `write`, but reports a closed reader (so a following loop can stop).
    pub fn try_write(&self, text: &str) -> std::io::Result<()> {
        if self.to_stderr {
            let mut err = std::io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        }
    }

    pub fn line(&self, text: &str) {
        self.write(&format!("{text}\n"));
    }

    /// `X... ` with no newline, like `c.Startf`.
    pub fn start(&self, what: &str) {
        self.write(&format!("{what}... "));
    }

    pub fn ok(&self) {
        self.write("OK\n");
    }

    pub fn ok_with(&self, id: &str) {
        self.write(&format!("OK, {id}\n"));
    }
}

#[derive(Debug, Clone)]
pub struct Ctx {
    pub home: Home,
    pub time_scale: f64,
    pub cwd: PathBuf,
    pub out: Out,
}

impl Ctx {
    pub fn from_env() -> Result<Ctx> {
        let root = std::env::var_os(HOME_VAR)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                crate::fail!(
                    "{HOME_VAR} is not set: point it at a directory for the stand-in's racks (e.g. export {HOME_VAR}=$PWD/.sim)"
                )
            })?;
        let time_scale = match std::env::var(SCALE_VAR) {
            Ok(text) if !text.trim().is_empty() => parse_time_scale(&text)?,
            _ => 1.0,
        };
        let cwd = std::env::current_dir()
            .map_err(|e| crate::fail!("cannot read the current directory: {e}"))?;
        let root = PathBuf::from(root);
        let root = if root.is_absolute() {
            root
        } else {
            cwd.join(root)
        };
        Ok(Ctx {
            home: Home::new(root),
            time_scale,
            cwd,
            out: Out::default(),
        })
    }

    /// A real-CLI wait of `seconds`, multiplied by `CONVOX_SIM_TIME_SCALE`.
    pub fn scaled(&self, seconds: f64) -> Duration {
        Duration::from_secs_f64((seconds * self.time_scale).max(0.0))
    }

    fn local_setting(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.cwd.join(".convox").join(name))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Resolves the rack and fires an armed `transient` fault on it.
    pub fn rack(&self, parsed: &Parsed) -> Result<String> {
        let rack = self.rack_quiet(parsed)?;
        let armed = self
            .home
            .load(&rack)?
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::Transient);
        if armed
            && self.home.update(&rack, |s| {
                Ok(faults::take(s, FaultKind::Transient).is_some())
            })?
        {
            crate::bail!(
                "Get \"https://api.{rack}.convox.local/apps\": read: connection reset by peer"
            );
        }
        Ok(rack)
    }

    /// Resolves the rack without firing faults (for `convox sim …`).
    pub fn rack_quiet(&self, parsed: &Parsed) -> Result<String> {
        let wanted = parsed
            .value("rack")
            .map(str::to_string)
            .or_else(|| {
                std::env::var("CONVOX_RACK")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .or_else(|| self.local_setting("rack"));
        match wanted {
            Some(name) => self.home.match_rack(name.trim()),
            None => crate::bail!(
                "no current rack, use `convox racks` to list and `convox switch <name>` to select"
            ),
        }
    }

    pub fn app_name(&self, parsed: &Parsed) -> String {
        parsed
            .value("app")
            .map(str::to_string)
            .or_else(|| self.local_setting("app"))
            .unwrap_or_else(|| {
                self.cwd
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
    }
}

pub fn parse_time_scale(text: &str) -> Result<f64> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => crate::bail!(
            "{SCALE_VAR}={text} is not a number > 0: use e.g. 1.0 for real timings or 0.02 for tests"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scale_accepts_non_negative_numbers_only() {
        assert_eq!(parse_time_scale("0.05").unwrap(), 0.05);
        assert!(parse_time_scale("fast")
            .unwrap_err()
            .0
            .contains("CONVOX_SIM_TIME_SCALE=fast"));
        assert!(parse_time_scale("-1").is_err());
        assert!(parse_time_scale("0").is_err());
    }
}
