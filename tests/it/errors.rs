//! Bad input: a one-paragraph error, no panic, the right exit code, nothing changed.

use crate::harness::*;

#[test]
fn bad_racks_toml_names_the_line_and_exits_1() {
    let w = World::new();
    w.write_racks(&RACKS_TOML.replace("[state]\n", "[state]\nbuket = \"x\"\n"));
    let run = w.run_json(&["deploy"]);
    assert_eq!(run.code, 1, "{}", run.debug());
    let error = run.summary().rest["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("racks.toml:") && error.contains("unknown key `buket`"),
        "{error}"
    );
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn missing_convox_refuses_before_any_change() {
    let w = World::new();
    let before = w.actives();
    let out = w
        .cli()
        .env("ACME_CONVOX", w.dir.path().join("no-such-convox"))
        .args(["deploy", "--output", "json"])
        .output()
        .unwrap();
    let run = Run::from(out);
    assert_eq!(run.code, 3, "{}", run.debug());
    let summary = run.summary();
    assert!(summary.rest["error"]
        .as_str()
        .unwrap()
        .contains("no-such-convox"));
    assert!(summary.rest["error"]
        .as_str()
        .unwrap()
        .contains("ACME_CONVOX"));
    assert_eq!(w.actives(), before);
}

#[test]
fn unknown_rack_name_is_refused_with_exit_3() {
    let w = World::new();
    let out = w.cli().args(["deploy", "--only", "mars"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no rack matches `mars`"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn concurrent_deploys_exactly_one_proceeds() {
    let w = World::new();
    let a = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = w
        .cli()
        .args(["deploy", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ra = Run::from(a.wait_with_output().unwrap());
    let rb = Run::from(b.wait_with_output().unwrap());
    let mut codes = [ra.code, rb.code];
    codes.sort();
    assert_eq!(codes, [0, 4], "a: {}\nb: {}", ra.debug(), rb.debug());
    let loser = if ra.code == 4 { &ra } else { &rb };
    assert!(
        loser.summary().rest["error"]
            .as_str()
            .unwrap()
            .contains("test@ci"),
        "names the holder"
    );
}
