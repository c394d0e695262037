//! The command table: every command's words, flags, argument rule, help text and handler, plus
//! dispatch the way the real CLI's engine does it (longest matching word prefix; no match prints
//! the global help and exits 0; `-h` prints the command's help; errors print `ERROR: …`, exit 1).

mod apps;
mod builds;
mod releases;
mod runtime;
mod sim;

use std::io::Write;

use crate::args::{self, ArgRule, FlagSpec, Parsed};
use crate::ctx::Ctx;
use crate::error::Result;

pub type Handler = fn(&mut Ctx, &Parsed) -> Result<()>;

pub struct Command {
    pub words: &'static [&'static str],
    pub usage: &'static str,
    pub description: &'static str,
    pub flags: &'static [FlagSpec],
    pub args: ArgRule,
    /// Adds `-r/--rack` (and the hidden `-w/--wait`).
    pub rack: bool,
    /// Adds `-a/--app`.
    pub app: bool,
    pub hidden: bool,
    pub run: Handler,
}

const RACK_FLAG: FlagSpec = FlagSpec::value("rack", Some('r'), "rack name");
const APP_FLAG: FlagSpec = FlagSpec::value(
    "app",
    Some('a'),
    "app name inferred from current directory if not specified",
);
const WAIT_FLAG: FlagSpec = FlagSpec::boolean("wait", Some('w'), "wait for completion").hide();

impl Command {
    fn all_flags(&self) -> Vec<FlagSpec> {
        let mut flags = self.flags.to_vec();
        if self.app {
            flags.push(APP_FLAG);
        }
        if self.rack {
            flags.push(RACK_FLAG);
            flags.push(WAIT_FLAG);
        }
        flags
    }

    fn full_name(&self) -> String {
        self.words.join(" ")
    }

    fn help(&self) -> String {
        let mut out = format!(
            "USAGE\n  convox {}{}{}\n\nDESCRIPTION\n  {}\n",
            self.full_name(),
            if self.usage.is_empty() { "" } else { " " },
            self.usage,
            self.description
        );
        let flags: Vec<FlagSpec> = self.all_flags().into_iter().filter(|f| !f.hidden).collect();
        if !flags.is_empty() {
            out.push_str("\nOPTIONS\n");
            let labels: Vec<String> = flags
                .iter()
                .map(|f| {
                    let short = f.short.map(|c| format!("-{c} ")).unwrap_or_default();
                    let value = if f.kind == args::FlagKind::Bool {
                        String::new()
                    } else {
                        format!(" <{}>", f.long)
                    };
                    format!("{short}--{}{value}", f.long)
                })
                .collect();
            let width = labels.iter().map(String::len).max().unwrap_or(0);
            for (label, flag) in labels.iter().zip(&flags) {
                out.push_str(&format!("  {label:<width$}  {}\n", flag.help));
            }
        }
        out
    }
}

pub fn commands() -> Vec<Command> {
    let mut all = Vec::new();
    all.extend(apps::commands());
    all.extend(builds::commands());
    all.extend(releases::commands());
    all.extend(runtime::commands());
    all.extend(sim::commands());
    all
}

fn global_help(commands: &[Command]) -> String {
    let visible: Vec<&Command> = commands.iter().filter(|c| !c.hidden).collect();
    let width = visible
        .iter()
        .map(|c| c.full_name().len())
        .max()
        .unwrap_or(0);
    let mut names: Vec<(String, &str)> = visible
        .iter()
        .map(|c| (c.full_name(), c.description))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(name, description)| format!("{name:<width$}  {description}\n"))
        .collect()
}

/// Runs one invocation; returns the process exit code.
pub fn run(argv: &[String]) -> i32 {
    if matches!(argv.first().map(String::as_str), Some("-v" | "--version")) {
        print_stdout(&format!("client: {}\n", apps::RACK_VERSION));
        return 0;
    }
    let commands = commands();
    let chosen = commands
        .iter()
        .filter(|c| c.words.len() <= argv.len() && c.words.iter().zip(argv).all(|(w, a)| w == a))
        .max_by_key(|c| c.words.len());
    let Some(command) = chosen else {
        print_stdout(&global_help(&commands));
        return 0;
    };
    let rest = &argv[command.words.len()..];
    if args::wants_help(rest) {
        print_stdout(&command.help());
        return 0;
    }
    match execute(command, rest) {
        Ok(()) => 0,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "ERROR: {e}");
            1
        }
    }
}

fn execute(command: &Command, rest: &[String]) -> Result<()> {
    let parsed = args::parse(rest, &command.all_flags())?;
    command.args.check(parsed.positionals.len())?;
    let mut ctx = Ctx::from_env()?;
    (command.run)(&mut ctx, &parsed)
}

fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_unique_and_helpful() {
        let all = commands();
        let mut names: Vec<String> = all.iter().map(|c| c.full_name()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate command words");
        for command in &all {
            let help = command.help();
            assert!(help.starts_with("USAGE\n  convox "));
            assert!(help.contains("DESCRIPTION"));
        }
    }

    #[test]
    fn global_help_lists_visible_commands_only() {
        let help = global_help(&commands());
        assert!(help.lines().any(|l| l.starts_with("releases rollback ")));
        assert!(help.lines().any(|l| l.starts_with("sim fault set ")));
        assert!(!help.contains("sim pod"));
        assert!(!help.contains("sim router"));
    }
}
