//! Persistent rack state under `$CONVOX_SIM_HOME`. One JSON document per rack
//! (`racks/<rack>/state.json`) holds its apps, builds, releases, pods, routers and armed faults.
//! Writers take a per-rack file lock (`racks/<rack>/state.lock`) for the read-modify-write only,
//! never across a whole promote, and replace the document atomically (temp file + rename), so
//! readers never need the lock and never see half a file.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, Result};
use crate::faults::Fault;

/// The stand-in's state root.
#[derive(Debug, Clone)]
pub struct Home {
    pub root: PathBuf,
}

impl Home {
    pub fn new(root: PathBuf) -> Home {
        Home { root }
    }

    pub fn racks_dir(&self) -> PathBuf {
        self.root.join("racks")
    }

    pub fn rack_dir(&self, rack: &str) -> PathBuf {
        self.racks_dir().join(rack)
    }

    /// Where a user puts real executables that Dockerfile `CMD`s may name.
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }

    pub fn app_log(&self, rack: &str, app: &str) -> PathBuf {
        self.rack_dir(rack).join("apps").join(app).join("app.log")
    }

    pub fn image_path(&self, rack: &str, build: &str) -> PathBuf {
        self.rack_dir(rack)
            .join("images")
            .join(format!("{build}.tar"))
    }

    /// The unpacked build context pods run in.
    pub fn context_dir(&self, rack: &str, build: &str) -> PathBuf {
        self.rack_dir(rack).join("contexts").join(build)
    }

    /// Names of every rack, sorted.
    pub fn rack_names(&self) -> Result<Vec<String>> {
        let dir = self.racks_dir();
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).context(|| format!("reading {}", dir.display()))? {
            let entry = entry.context(|| format!("reading {}", dir.display()))?;
            if entry.path().join("state.json").exists() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Resolves a rack name like the real CLI: exact name, else a unique substring.
    pub fn match_rack(&self, wanted: &str) -> Result<String> {
        let names = self.rack_names()?;
        if names.iter().any(|n| n == wanted) {
            return Ok(wanted.to_string());
        }
        let hits: Vec<&String> = names.iter().filter(|n| n.contains(wanted)).collect();
        match hits.as_slice() {
            [only] => Ok((*only).clone()),
            [] => crate::bail!("could not find rack: {wanted}"),
            _ => crate::bail!("ambiguous rack name: {wanted}"),
        }
    }

    pub fn load(&self, rack: &str) -> Result<RackState> {
        let path = self.rack_dir(rack).join("state.json");
        let text = fs::read_to_string(&path).context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).context(|| {
            format!(
                "{} is not valid stand-in state (delete the rack directory and recreate it)",
                path.display()
            )
        })
    }

    /// Writes a brand-new rack; fails if it exists.
    pub fn create_rack(&self, state: &RackState) -> Result<()> {
        let dir = self.rack_dir(&state.name);
        if dir.join("state.json").exists() {
            crate::bail!("rack already exists: {}", state.name);
        }
        fs::create_dir_all(&dir).context(|| format!("creating {}", dir.display()))?;
        self.save(state)
    }

    fn save(&self, state: &RackState) -> Result<()> {
        let path = self.rack_dir(&state.name).join("state.json");
        let text =
            serde_json::to_string_pretty(state).context(|| "encoding rack state".to_string())?;
        write_atomically(&path, text.as_bytes())
    }

    /// Locked read-modify-write of one rack's state.
    pub fn update<T>(
        &self,
        rack: &str,
        change: impl FnOnce(&mut RackState) -> Result<T>,
    ) -> Result<T> {
        let lock_path = self.rack_dir(rack).join("state.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context(|| format!("opening {}", lock_path.display()))?;
        lock.lock()
            .context(|| format!("locking {}", lock_path.display()))?;
        let mut state = self.load(rack)?;
        let result = change(&mut state)?;
        self.save(&state)?;
        drop(lock);
        Ok(result)
    }
}

/// Writes `bytes` to a sibling temp file and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = path.with_extension(format!("tmp.{}.{}", std::process::id(), fastrand::u32(..)));
    let mut file = fs::File::create(&tmp).context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RackState {
    pub name: String,
    pub region: String,
    pub created_ms: i64,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
}

impl RackState {
    pub fn app(&self, name: &str) -> Result<&App> {
        self.apps
            .get(name)
            .ok_or_else(|| crate::fail!("app not found: {name}"))
    }

    pub fn app_mut(&mut self, name: &str) -> Result<&mut App> {
        self.apps
            .get_mut(name)
            .ok_or_else(|| crate::fail!("app not found: {name}"))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct App {
    pub name: String,
    /// `running`, `updating` or `rollback`.
    pub status: String,
    /// The active release, empty before the first promote.
    #[serde(default)]
    pub release: String,
    pub created_ms: i64,
    #[serde(default)]
    pub builds: Vec<Build>,
    /// Oldest first; the index order is the creation order.
    #[serde(default)]
    pub releases: Vec<Release>,
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// Stable router per service.
    #[serde(default)]
    pub routers: BTreeMap<String, Router>,
    /// Runtime counts set by `convox scale --count`, which outlive later promotes.
    #[serde(default)]
    pub scale: BTreeMap<String, u32>,
}

impl App {
    pub fn new(name: &str, now_ms: i64) -> App {
        App {
            name: name.to_string(),
            status: "running".to_string(),
            release: String::new(),
            created_ms: now_ms,
            builds: Vec::new(),
            releases: Vec::new(),
            pods: Vec::new(),
            routers: BTreeMap::new(),
            scale: BTreeMap::new(),
        }
    }

    pub fn release(&self, id: &str) -> Result<&Release> {
        self.releases
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| crate::fail!("release not found: {id}"))
    }

    pub fn build(&self, id: &str) -> Result<&Build> {
        self.builds
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| crate::fail!("build not found: {id}"))
    }

    pub fn latest_release(&self) -> Option<&Release> {
        self.releases.last()
    }

    pub fn release_index(&self, id: &str) -> Option<usize> {
        self.releases.iter().position(|r| r.id == id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Build {
    pub id: String,
    /// `created`, `running`, `complete` or `failed`.
    pub status: String,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub description: String,
    pub started_ms: i64,
    #[serde(default)]
    pub ended_ms: i64,
    /// `sha256:<hex>` of the image tar.
    #[serde(default)]
    pub digest: String,
    /// The convox.yml text.
    #[serde(default)]
    pub manifest: String,
    #[serde(default)]
    pub logs: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Release {
    pub id: String,
    #[serde(default)]
    pub build: String,
    /// Sorted `K=V` pairs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub manifest: String,
    #[serde(default)]
    pub description: String,
    pub created_ms: i64,
}

/// Faults that stick to one pod for its whole life (armed at promote time).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodFaults {
    #[serde(default)]
    pub never_ready: bool,
    #[serde(default)]
    pub unhealthy: bool,
    #[serde(default)]
    pub error_logs: bool,
    /// Extra milliseconds before every response through the router.
    #[serde(default)]
    pub slow_ms: u64,
    /// Seconds after start at which the pod exits.
    #[serde(default)]
    pub crash_after_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pod {
    pub id: String,
    pub service: String,
    pub release: String,
    pub port: u16,
    /// The supervisor's pid; it leads its own process group.
    pub pid: u32,
    /// `pending`, `starting` or `running` as last recorded; a dead pid shows as `crashed`.
    pub status: String,
    pub started_ms: i64,
    pub command: String,
    #[serde(default)]
    pub faults: PodFaults,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Router {
    pub port: u16,
    #[serde(default)]
    pub pid: u32,
}

/// `B` + 10 random uppercase letters.
pub fn new_build_id() -> String {
    random_id('B')
}

/// `R` + 10 random uppercase letters.
pub fn new_release_id() -> String {
    random_id('R')
}

fn random_id(prefix: char) -> String {
    std::iter::once(prefix)
        .chain((0..10).map(|_| fastrand::uppercase()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rack(name: &str) -> RackState {
        RackState {
            name: name.into(),
            region: "us-east-1".into(),
            created_ms: 0,
            faults: Vec::new(),
            apps: BTreeMap::new(),
        }
    }

    #[test]
    fn rack_names_match_exactly_or_by_unique_substring() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        for name in ["us-prod", "eu-prod", "apac-prod"] {
            home.create_rack(&rack(name)).unwrap();
        }
        assert_eq!(home.match_rack("eu-prod").unwrap(), "eu-prod");
        assert_eq!(home.match_rack("apac").unwrap(), "apac-prod");
        assert_eq!(
            home.match_rack("prod").unwrap_err().0,
            "ambiguous rack name: prod"
        );
        assert_eq!(
            home.match_rack("mars").unwrap_err().0,
            "could not find rack: mars"
        );
        assert_eq!(
            home.create_rack(&rack("eu-prod")).unwrap_err().0,
            "rack already exists: eu-prod"
        );
    }

    #[test]
    fn updates_persist_and_unknown_apps_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        home.create_rack(&rack("r1")).unwrap();
        home.update("r1", |s| {
            s.apps.insert("web".into(), App::new("web", 1));
            Ok(())
        })
        .unwrap();
        let state = home.load("r1").unwrap();
        assert!(state.app("web").is_ok());
        assert_eq!(state.app("api").unwrap_err().0, "app not found: api");
    }

    #[test]
    fn ids_have_the_real_shape() {
        let id = new_release_id();
        assert_eq!(id.len(), 11);
        assert!(id.starts_with('R'));
        assert!(id[1..].chars().all(|c| c.is_ascii_uppercase()));
    }
}
