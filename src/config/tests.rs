use super::*;

const GOOD: &str = include_str!("../../racks.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/repo/racks.toml"), text)
}

fn error_of(text: &str) -> (usize, usize, String, Option<String>) {
    match parse(text).unwrap_err() {
        ConfigError::Invalid {
            line,
            col,
            message,
            hint,
            ..
        } => (line, col, message, hint),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn the_seed_file_is_valid() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.racks.len(), 3);
    assert_eq!(c.waves.len(), 2);
    assert_eq!(c.waves[0].racks, vec![0]);
    assert_eq!(c.app.source, Path::new("/repo/inference"));
    assert_eq!(c.racks[2].bake.duration, Duration::from_secs(300));
    assert_eq!(c.racks[0].bake.health.as_ref().unwrap().consecutive, 5);
    assert!(c.rollback_promoted);
}

#[test]
fn rack_lookup_by_name_region_alias_and_substring() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.find_rack("apac").unwrap().name, "apac-prod");
    assert_eq!(c.find_rack("eu-west-1").unwrap().name, "eu-prod");
    assert_eq!(c.find_rack("us-prod").unwrap().name, "us-prod");
    assert_eq!(c.find_rack("ap").unwrap().name, "apac-prod");
    assert!(matches!(
        c.find_rack("prod"),
        Err(RackLookupError::Ambiguous { .. })
    ));
    assert!(matches!(
        c.find_rack("mars"),
        Err(RackLookupError::Unknown { .. })
    ));
}

#[test]
fn unknown_key_is_located() {
    let text = GOOD.replace("[state]\n", "[state]\nbuket = \"x\"\n");
    let (line, col, message, hint) = error_of(&text);
    let expected_line = text.lines().position(|l| l.starts_with("buket")).unwrap() + 1;
    assert_eq!((line, col), (expected_line, 1));
    assert!(message.contains("unknown key `buket`"), "{message}");
    assert!(hint.unwrap().contains("`dir`"));
}

#[test]
fn duplicate_rack_is_refused() {
    let text = GOOD.replace("name = \"eu-prod\"", "name = \"us-prod\"");
    let (_, _, message, _) = error_of(&text);
    assert!(
        message.contains("rack `us-prod` is defined twice"),
        "{message}"
    );
}

#[test]
fn rack_in_no_wave_is_refused() {
    let text = GOOD.replace(
        "racks = [\"eu-prod\", \"apac-prod\"]",
        "racks = [\"eu-prod\"]",
    );
    let (line, _, message, _) = error_of(&text);
    assert!(message.contains("`apac-prod` is in no wave"), "{message}");
    let expected_line = text
        .lines()
        .position(|l| l.contains("name = \"apac-prod\""))
        .unwrap()
        + 1;
    assert_eq!(line, expected_line);
}

#[test]
fn empty_wave_and_unknown_rack_in_wave() {
    let text = GOOD.replace("racks = [\"us-prod\"]", "racks = []");
    assert!(error_of(&text).2.contains("canary has no racks"));
    let text = GOOD.replace("racks = [\"us-prod\"]", "racks = [\"us-prd\"]");
    let (_, _, message, hint) = error_of(&text);
    assert!(
        message.contains("`us-prd`, which is not defined"),
        "{message}"
    );
    assert!(hint.unwrap().contains("known racks"));
    let text = GOOD.replace("racks = [\"us-prod\"]", "racks = [\"us\"]");
    assert_eq!(
        error_of(&text).3.as_deref(),
        Some("did you mean `us-prod`?")
    );
}

#[test]
fn bad_duration_names_the_value() {
    let text = GOOD.replace("duration = \"5m\"", "duration = \"five minutes\"");
    let (line, col, message, hint) = error_of(&text);
    assert!(
        message.contains("`five minutes` is not a duration"),
        "{message}"
    );
    assert!(hint.unwrap().contains("90s"));
    let l = text.lines().nth(line - 1).unwrap();
    assert_eq!(&l[col - 1..col], "\"");
}

#[test]
fn alias_matching_two_racks_is_refused() {
    let text = GOOD.replace("aliases = [\"eu\"]", "aliases = [\"eu\", \"us\"]");
    let (_, _, message, _) = error_of(&text);
    assert!(
        message.contains("alias `us` of rack `eu-prod` also matches rack `us-prod`"),
        "{message}"
    );
}

#[test]
fn per_rack_bake_overrides_defaults() {
    let text = GOOD.replace(
        "region = \"ap-southeast-1\"",
        "region = \"ap-southeast-1\"\nbake = { duration = \"30s\", logs = { enabled = false } }",
    );
    let c = parse(&text).unwrap();
    let apac = c.find_rack("apac").unwrap();
    assert_eq!(apac.bake.duration, Duration::from_secs(30));
    assert!(apac.bake.logs.is_none());
    assert_eq!(apac.bake.health, c.racks[0].bake.health);
}

#[test]
fn missing_section_is_explained() {
    let text = GOOD.replace(
        "name = \"inference\"              # the Convox app in every rack\n",
        "",
    );
    let (_, _, message, hint) = error_of(&text);
    assert!(
        message.contains("required key `name` is missing"),
        "{message}"
    );
    assert!(hint.is_some());
}

#[test]
fn drain_cpu_reads_its_defaults_and_refuses_a_bad_target() {
    let cpu = "[dns.cpu]\nnamespace = \"ContainerInsights\"\nmetric = \"pod_cpu_utilization\"\ndimensions = { ClusterName = \"{rack}\" }\n";
    let text = GOOD.replace("\n[models]", &format!("{cpu}\n[models]"));
    let c = parse(&text).unwrap();
    let got = c.dns.unwrap().cpu.unwrap();
    assert_eq!(got.stat, acme_aws::cloudwatch::Stat::Average);
    assert_eq!(got.target, 70.0);
    assert_eq!(got.window, Duration::from_secs(600));
    assert_eq!(
        got.dimensions,
        vec![("ClusterName".into(), "{rack}".into())]
    );

    let text = GOOD.replace("\n[models]", &format!("{cpu}target = 170\n\n[models]"));
    let (line, _, message, hint) = error_of(&text);
    let expected = text
        .lines()
        .position(|l| l.starts_with("target = 170"))
        .unwrap()
        + 1;
    assert_eq!(line, expected);
    assert!(message.contains("target 170"), "{message}");
    assert!(hint.unwrap().contains("percentage"));
}
