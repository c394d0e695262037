//! A small pflag-style argv parser with the real CLI's exact messages: `--flag value`,
//! `--flag=value`, `-f value`, `-fvalue`, bool flags without a value, flags before or after
//! positionals, `--` ends flags, and argument-count rules (`1 arg required` …).

use std::collections::BTreeMap;

use crate::error::Result;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--force`, `--force=true|false`.
    Bool,
    /// `--rack NAME`; given twice, the last one wins.
    Value,
    /// `--build-args K=V` given several times; every value is kept.
    Repeat,
}

#[derive(Debug, Clone, Copy)]
pub struct FlagSpec {
    pub long: &'static str,
    pub short: Option<char>,
    pub kind: FlagKind,
    pub help: &'static str,
    /// Accepted but left out of `--help` (like the real CLI's `--wait`).
    pub hidden: bool,
}

impl FlagSpec {
    pub const fn value(long: &'static str, short: Option<char>, help: &'static str) -> FlagSpec {
        FlagSpec {
            long,
            short,
            kind: FlagKind::Value,
            help,
            hidden: false,
        }
    }

    pub const fn boolean(long: &'static str, short: Option<char>, help: &'static str) -> FlagSpec {
        FlagSpec {
            long,
            short,
            kind: FlagKind::Bool,
            help,
            hidden: false,
        }
    }

    pub const fn repeat(long: &'static str, short: Option<char>, help: &'static str) -> FlagSpec {
        FlagSpec {
            long,
            short,
            kind: FlagKind::Repeat,
            help,
            hidden: false,
        }
    }

    pub const fn hide(mut self) -> FlagSpec {
        self.hidden = true;
        self
    }
}

/// How many positional arguments a command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgRule {
    Exactly(usize),
    AtLeast(usize),
    AtMost(usize),
    Any,
}

impl ArgRule {
    pub fn check(self, count: usize) -> Result<()> {
        let plural = |n: usize| if n == 1 { "arg" } else { "args" };
        match self {
            ArgRule::Exactly(n) if count != n => crate::bail!("{n} {} required", plural(n)),
            ArgRule::AtLeast(n) if count < n => crate::bail!("at least {n} {} required", plural(n)),
            ArgRule::AtMost(n) if count > n => {
                crate::bail!("no more than {n} {} expected", plural(n))
            }
            _ => Ok(()),
        }
    }
}

/// The result of parsing: positionals in order, flag values keyed by long name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub positionals: Vec<String>,
    values: BTreeMap<String, Vec<String>>,
}

impl Parsed {
    /// The last value given for a value flag.
    pub fn value(&self, long: &str) -> Option<&str> {
        self.values
            .get(long)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    pub fn values(&self, long: &str) -> &[String] {
        self.values.get(long).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn flag(&self, long: &str) -> bool {
        self.value(long).is_some_and(|v| v == "true")
    }

    pub fn given(&self, long: &str) -> bool {
        self.values.contains_key(long)
    }

    /// A flag value parsed as an integer, with the pflag-style error on garbage.
    pub fn int(&self, long: &str) -> Result<Option<i64>> {
        match self.value(long) {
            None => Ok(None),
            Some(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
                crate::fail!("invalid argument \"{text}\" for \"--{long}\" flag: strconv.ParseInt: parsing \"{text}\": invalid syntax")
            }),
        }
    }
}

/// Whether argv asks for help (`-h`/`--help` anywhere before `--`).
pub fn wants_help(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| a.as_str() != "--")
        .any(|a| a == "-h" || a == "--help")
}

pub fn parse(args: &[String], specs: &[FlagSpec]) -> Result<Parsed> {
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.positionals.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long_part) = arg.strip_prefix("--") {
            let (name, inline) = match long_part.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long_part, None),
            };
            let spec = specs
                .iter()
                .find(|s| s.long == name)
                .ok_or_else(|| crate::fail!("unknown flag: --{name}"))?;
            let value = match (spec.kind, inline) {
                (FlagKind::Bool, Some(v)) => parse_bool(&v, name)?,
                (FlagKind::Bool, None) => "true".to_string(),
                (_, Some(v)) => v,
                (_, None) => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| crate::fail!("flag needs an argument: --{name}"))?;
                    i += 1;
                    v.clone()
                }
            };
            parsed
                .values
                .entry(spec.long.to_string())
                .or_default()
                .push(value);
        } else if arg.len() > 1 && arg.starts_with('-') {
            let shorts: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < shorts.len() {
                let c = shorts[j];
                j += 1;
                let spec = specs
                    .iter()
                    .find(|s| s.short == Some(c))
                    .ok_or_else(|| crate::fail!("unknown flag: -{c}"))?;
                let value = if spec.kind == FlagKind::Bool {
                    "true".to_string()
                } else if j < shorts.len() {
                    let rest: String = shorts[j..].iter().collect();
                    j = shorts.len();
                    rest.strip_prefix('=').map(str::to_string).unwrap_or(rest)
                } else {
                    let v = args
                        .get(i)
                        .ok_or_else(|| crate::fail!("flag needs an argument: '{c}' in -{c}"))?;
                    i += 1;
                    v.clone()
                };
                parsed
                    .values
                    .entry(spec.long.to_string())
                    .or_default()
                    .push(value);
            }
        } else {
            parsed.positionals.push(arg.clone());
        }
    }
    Ok(parsed)
}

fn parse_bool(text: &str, name: &str) -> Result<String> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok("true".into()),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok("false".into()),
        _ => crate::bail!(
            "invalid argument \"{text}\" for \"--{name}\" flag: strconv.ParseBool: parsing \"{text}\": invalid syntax"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[FlagSpec] = &[
        FlagSpec::value("rack", Some('r'), "rack name"),
        FlagSpec::value("app", Some('a'), "app name"),
        FlagSpec::boolean("force", None, "force"),
        FlagSpec::boolean("id", None, "id"),
        FlagSpec::repeat("build-args", None, "args"),
    ];

    fn argv(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_before_and_after_positionals_in_every_form() {
        let p = parse(
            &argv(&["-r", "eu", "promote", "--app=web", "R1", "--force", "-aapi"]),
            SPECS,
        )
        .unwrap();
        assert_eq!(p.positionals, vec!["promote", "R1"]);
        assert_eq!(p.value("rack"), Some("eu"));
        assert_eq!(p.value("app"), Some("api"));
        assert!(p.flag("force"));
        assert!(!p.flag("id"));
    }

    #[test]
    fn repeated_flags_keep_all_values_and_double_dash_ends_flags() {
        let p = parse(
            &argv(&["--build-args", "A=1", "--build-args=B=2", "--", "--id"]),
            SPECS,
        )
        .unwrap();
        assert_eq!(
            p.values("build-args"),
            &["A=1".to_string(), "B=2".to_string()]
        );
        assert_eq!(p.positionals, vec!["--id"]);
    }

    #[test]
    fn unknown_flags_and_missing_values_use_pflag_messages() {
        assert_eq!(
            parse(&argv(&["--foo"]), SPECS).unwrap_err().0,
            "unknown flag: --foo"
        );
        assert_eq!(
            parse(&argv(&["-x"]), SPECS).unwrap_err().0,
            "unknown flag: -x"
        );
        assert_eq!(
            parse(&argv(&["--rack"]), SPECS).unwrap_err().0,
            "flag needs an argument: --rack"
        );
        assert_eq!(
            parse(&argv(&["-r"]), SPECS).unwrap_err().0,
            "flag needs an argument: 'r' in -r"
        );
        assert!(parse(&argv(&["--force=maybe"]), SPECS)
            .unwrap_err()
            .0
            .contains("ParseBool"));
    }

    #[test]
    fn bool_flag_can_be_switched_off_explicitly() {
        let p = parse(&argv(&["--force=false"]), SPECS).unwrap();
        assert!(!p.flag("force"));
    }

    #[test]
    fn argument_count_messages() {
        assert_eq!(
            ArgRule::Exactly(1).check(0).unwrap_err().0,
            "1 arg required"
        );
        assert_eq!(
            ArgRule::Exactly(0).check(2).unwrap_err().0,
            "0 args required"
        );
        assert_eq!(
            ArgRule::Exactly(2).check(1).unwrap_err().0,
            "2 args required"
        );
        assert_eq!(
            ArgRule::AtLeast(1).check(0).unwrap_err().0,
            "at least 1 arg required"
        );
        assert_eq!(
            ArgRule::AtMost(1).check(2).unwrap_err().0,
            "no more than 1 arg expected"
        );
        assert!(ArgRule::AtMost(1).check(1).is_ok());
        assert!(ArgRule::Any.check(9).is_ok());
    }

    #[test]
    fn help_is_detected_before_double_dash_only() {
        assert!(wants_help(&argv(&["releases", "-h"])));
        assert!(!wants_help(&argv(&["--", "-h"])));
    }
}
