//! Build "images": the packaged build context as a deterministic tar (sorted entries, zeroed
//! times and owners, so the same bytes always give the same `sha256:` digest), the Dockerfile facts
//! the stand-in uses (steps for the build log, `CMD`/`ENTRYPOINT` for what a pod runs), and the
//! export archive that carries one build between racks.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dockerignore::IgnoreRules;
use crate::error::{Context, Result};

/// Packs `dir` into a tar, leaving out what `dir/.dockerignore` excludes.
pub fn package_context(dir: &Path) -> Result<Vec<u8>> {
    let rules = match fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => IgnoreRules::parse(&text),
        Err(_) => IgnoreRules::default(),
    };
    let mut files = Vec::new();
    collect(dir, "", &rules, &mut files)?;
    let mut builder = tar::Builder::new(Vec::new());
    for (relative, path, is_dir) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if is_dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, format!("{relative}/"), std::io::empty())
                .context(|| format!("packaging {}", path.display()))?;
        } else {
            let bytes = fs::read(&path).context(|| format!("reading {}", path.display()))?;
            let executable = fs::metadata(&path)
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
                .unwrap_or(false);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(bytes.len() as u64);
            builder
                .append_data(&mut header, &relative, bytes.as_slice())
                .context(|| format!("packaging {}", path.display()))?;
        }
    }
    builder
        .into_inner()
        .context(|| format!("packaging {}", dir.display()))
}

fn collect(
    root: &Path,
    prefix: &str,
    rules: &IgnoreRules,
    out: &mut Vec<(String, PathBuf, bool)>,
) -> Result<()> {
    let dir = if prefix.is_empty() {
        root.to_path_buf()
    } else {
        root.join(prefix)
    };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        // Symlinks and sockets are left out: a context is plain files.
        if kind.is_dir() {
            if rules.is_ignored(&relative, true) {
                continue;
            }
            out.push((relative.clone(), entry.path(), true));
            collect(root, &relative, rules, out)?;
        } else if kind.is_file() && !rules.is_ignored(&relative, false) {
            out.push((relative, entry.path(), false));
        }
    }
    Ok(())
}

/// `sha256:<hex>` of the image bytes.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Reads one file out of an image tar.
pub fn read_file(image: &[u8], wanted: &str) -> Option<Vec<u8>> {
    let mut archive = tar::Archive::new(image);
    for entry in archive.entries().ok()? {
        let mut entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") == wanted {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).ok()?;
            return Some(bytes);
        }
    }
    None
}

/// Unpacks an image into `dir` (once; an existing directory is kept).
pub fn unpack(image_path: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let tmp = dir.with_extension(format!("unpacking.{}", std::process::id()));
    let file =
        fs::File::open(image_path).context(|| format!("opening {}", image_path.display()))?;
    fs::create_dir_all(&tmp).context(|| format!("creating {}", tmp.display()))?;
    tar::Archive::new(file)
        .unpack(&tmp)
        .context(|| format!("unpacking {}", image_path.display()))?;
    if fs::rename(&tmp, dir).is_err() {
        // Another invocation unpacked the same build first; theirs is identical.
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// The Dockerfile facts the stand-in needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// Each instruction as written (continuations joined), for `Step i/n : …` log lines.
    pub steps: Vec<String>,
    /// The argv the container would start with (ENTRYPOINT + CMD, shell form via `/bin/sh -c`).
    pub start: Vec<String>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Dockerfile {
        let mut steps = Vec::new();
        let mut pending = String::new();
        for raw in text.lines() {
            let line = raw.trim();
            if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
                continue;
            }
            if let Some(body) = line.strip_suffix('\\') {
                pending.push_str(body.trim());
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            steps.push(std::mem::take(&mut pending).trim().to_string());
        }
        if !pending.trim().is_empty() {
            steps.push(pending.trim().to_string());
        }
        let mut entrypoint: Option<Vec<String>> = None;
        let mut cmd: Option<Vec<String>> = None;
        for step in &steps {
            let (word, rest) = step.split_once(char::is_whitespace).unwrap_or((step, ""));
            match word.to_ascii_uppercase().as_str() {
                "ENTRYPOINT" => entrypoint = Some(instruction_argv(rest.trim())),
                "CMD" => cmd = Some(instruction_argv(rest.trim())),
                _ => {}
            }
        }
        let start = match (entrypoint, cmd) {
            (Some(ep), Some(cmd)) if !is_shell_form(&ep) => ep.into_iter().chain(cmd).collect(),
            (Some(ep), _) => ep,
            (None, Some(cmd)) => cmd,
            (None, None) => Vec::new(),
        };
        Dockerfile { steps, start }
    }

    /// The program the container starts, with shell form looked through to its first word.
    pub fn program(&self) -> Option<(String, Vec<String>)> {
        let argv: Vec<String> = if is_shell_form(&self.start) {
            self.start[2]
                .split_whitespace()
                .map(str::to_string)
                .collect()
        } else {
            self.start.clone()
        };
        let (first, rest) = argv.split_first()?;
        let basename = first.rsplit('/').next().unwrap_or(first).to_string();
        Some((basename, rest.to_vec()))
    }
}

fn is_shell_form(argv: &[String]) -> bool {
    argv.len() == 3 && argv[0] == "/bin/sh" && argv[1] == "-c"
}

fn instruction_argv(rest: &str) -> Vec<String> {
    if rest.starts_with('[') {
        if let Ok(list) = serde_json::from_str::<Vec<String>>(rest) {
            return list;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), rest.to_string()]
}

/// What `builds export` writes next to the image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportMeta {
    pub app: String,
    pub build: String,
    pub description: String,
    pub digest: String,
    pub manifest: String,
}

/// A gzip tar holding `build.json`, `convox.yml` and `image.tar`.
pub fn write_export(meta: &ExportMeta, image: &[u8]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let meta_json =
        serde_json::to_vec_pretty(meta).context(|| "encoding build metadata".to_string())?;
    let files: [(&str, &[u8]); 3] = [
        ("build.json", &meta_json),
        ("convox.yml", meta.manifest.as_bytes()),
        ("image.tar", image),
    ];
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        builder
            .append_data(&mut header, name, bytes)
            .context(|| "writing the export archive".to_string())?;
    }
    let encoder = builder
        .into_inner()
        .context(|| "writing the export archive".to_string())?;
    let mut out = encoder
        .finish()
        .context(|| "writing the export archive".to_string())?;
    out.flush().ok();
    Ok(out)
}

/// Reads an export archive back; refuses one whose image does not match its recorded digest.
pub fn read_export(bytes: &[u8]) -> Result<(ExportMeta, Vec<u8>)> {
    let not_export = |why: String| {
        crate::fail!(
            "not a build export ({why}): make it with `convox builds export BUILD -f FILE`"
        )
    };
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let mut meta = None;
    let mut image = None;
    let entries = archive.entries().map_err(|e| not_export(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_export(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| not_export(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| not_export(e.to_string()))?;
        match name.as_str() {
            "build.json" => {
                meta = Some(
                    serde_json::from_slice::<ExportMeta>(&content)
                        .map_err(|e| not_export(format!("build.json: {e}")))?,
                )
            }
            "image.tar" => image = Some(content),
            _ => {}
        }
    }
    let meta = meta.ok_or_else(|| not_export("no build.json".into()))?;
    let image = image.ok_or_else(|| not_export("no image.tar".into()))?;
    let actual = digest(&image);
    if actual != meta.digest {
        crate::bail!(
            "build export is corrupt: image digest {actual} does not match recorded {}",
            meta.digest
        );
    }
    Ok((meta, image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaging_is_deterministic_and_honours_dockerignore() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("convox.yml"), "services: {}\n").unwrap();
        fs::write(dir.path().join(".dockerignore"), "target/\n*.log\n").unwrap();
        fs::create_dir_all(dir.path().join("target/debug")).unwrap();
        fs::write(dir.path().join("target/debug/big"), "x").unwrap();
        fs::write(dir.path().join("run.log"), "x").unwrap();
        fs::create_dir_all(dir.path().join("src")).unwrap();
        fs::write(dir.path().join("src/main.rs"), "fn main() {}").unwrap();
        let first = package_context(dir.path()).unwrap();
        let second = package_context(dir.path()).unwrap();
        assert_eq!(digest(&first), digest(&second));
        assert!(read_file(&first, "src/main.rs").is_some());
        assert!(read_file(&first, "target/debug/big").is_none());
        assert!(read_file(&first, "run.log").is_none());
        fs::write(dir.path().join("src/main.rs"), "fn main() { }").unwrap();
        assert_ne!(
            digest(&first),
            digest(&package_context(dir.path()).unwrap())
        );
    }

    #[test]
    fn dockerfile_steps_and_start_command() {
        let d = Dockerfile::parse(
            "FROM rust:1 AS build\n# comment\nRUN cargo build \\\n  --release\nENTRYPOINT [\"/usr/local/bin/inference-server\"]\nCMD [\"--port\", \"8080\"]\n",
        );
        assert_eq!(d.steps.len(), 4);
        assert_eq!(d.steps[1], "RUN cargo build --release");
        assert_eq!(
            d.program(),
            Some((
                "inference-server".into(),
                vec!["--port".into(), "8080".into()]
            ))
        );
        let shell = Dockerfile::parse("FROM x\nCMD server --fast\n");
        assert_eq!(
            shell.program(),
            Some(("server".into(), vec!["--fast".into()]))
        );
        assert_eq!(Dockerfile::parse("FROM x\n").program(), None);
    }

    #[test]
    fn export_round_trip_keeps_digest_and_detects_corruption() {
        let image = b"image bytes".to_vec();
        let meta = ExportMeta {
            app: "web".into(),
            build: "BABC".into(),
            description: "d".into(),
            digest: digest(&image),
            manifest: "services: {}\n".into(),
        };
        let archive = write_export(&meta, &image).unwrap();
        let (back, bytes) = read_export(&archive).unwrap();
        assert_eq!(back, meta);
        assert_eq!(bytes, image);
        let mut wrong = meta.clone();
        wrong.digest = digest(b"other");
        let err = read_export(&write_export(&wrong, &image).unwrap())
            .unwrap_err()
            .0;
        assert!(err.starts_with("build export is corrupt"));
        assert!(read_export(b"garbage")
            .unwrap_err()
            .0
            .starts_with("not a build export"));
    }
}
