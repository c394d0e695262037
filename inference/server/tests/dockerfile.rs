//! Checks `inference/Dockerfile` without a Docker engine: it builds from the inference
//! workspace alone, compiles this package in release mode, and its final stage runs
//! `acme-infer` on port 8080.

use std::path::Path;

struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions with line continuations joined and comments dropped.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    joined
        .into_iter()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_string(),
            }
        })
        .collect()
}

fn inference_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn dockerfile() -> Vec<Instruction> {
    let text = std::fs::read_to_string(inference_dir().join("Dockerfile"))
        .expect("inference/Dockerfile exists");
    instructions(&text)
}

/// The instructions of the last stage (from its `FROM`).
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let start = all
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("a FROM");
    &all[start..]
}

#[test]
fn builds_from_the_inference_workspace_only() {
    let all = dockerfile();
    assert!(
        all.iter().filter(|i| i.keyword == "FROM").count() >= 2,
        "multi-stage"
    );
    for instruction in all
        .iter()
        .filter(|i| i.keyword == "COPY" || i.keyword == "ADD")
    {
        let words: Vec<&str> = instruction
            .args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let sources = &words[..words.len() - 1];
        for source in sources {
            assert!(
                !source.split('/').any(|part| part == ".."),
                "{} {} reaches outside the build context",
                instruction.keyword,
                instruction.args
            );
        }
    }
    let build = all
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .expect("a RUN with cargo build");
    assert!(build.args.contains("--release"), "{}", build.args);
    assert!(
        build.args.contains("-p server") || build.args.contains("--package server"),
        "{}",
        build.args
    );
    assert!(inference_dir().join("Cargo.toml").is_file());
    let ignore = std::fs::read_to_string(inference_dir().join(".dockerignore")).unwrap();
    assert!(ignore
        .lines()
        .any(|l| l.trim().trim_end_matches('/') == "target"));
}

#[test]
fn final_stage_runs_acme_infer_on_port_8080() {
    let all = dockerfile();
    let stage = final_stage(&all);
    let cmd = stage
        .iter()
        .rfind(|i| i.keyword == "CMD")
        .expect("a CMD in the final stage");
    let argv: Vec<String> = serde_json::from_str(&cmd.args)
        .unwrap_or_else(|e| panic!("CMD must be exec form (a JSON array): {} ({e})", cmd.args));
    assert!(
        argv.first().is_some_and(
            |program| program == "acme-infer" || program == "/usr/local/bin/acme-infer"
        ),
        "{argv:?}"
    );
    assert!(stage.iter().any(|i| i.keyword == "COPY"
        && i.args.starts_with("--from=")
        && i.args.ends_with("/usr/local/bin/acme-infer")));
    let exposed: Vec<&str> = stage
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .collect();
    assert!(
        exposed
            .iter()
            .any(|port| port.trim_end_matches("/tcp") == "8080"),
        "{exposed:?}"
    );
    // The binary the image installs is the one this package builds.
    let built = Path::new(env!("CARGO_BIN_EXE_acme-infer"));
    assert_eq!(built.file_stem().unwrap(), "acme-infer");
}
