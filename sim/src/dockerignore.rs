//! `.dockerignore` matching for packaging a build context, following Docker's rules for the common
//! cases: patterns are relative to the context root, `*` and `?` stay within one path segment, `**`
//! spans segments, a trailing `/` limits a pattern to directories, a match on a directory excludes
//! everything under it, `!pattern` re-includes, and the last matching line wins.

#[derive(Debug, Clone)]
struct Rule {
    segments: Vec<String>,
    dir_only: bool,
    negated: bool,
}

/// The parsed contents of one `.dockerignore` file.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

impl IgnoreRules {
    pub fn parse(text: &str) -> IgnoreRules {
        let mut rules = Vec::new();
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (negated, body) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let body = body.trim_start_matches("./").trim_start_matches('/');
            let dir_only = body.ends_with('/');
            let body = body.trim_end_matches('/');
            if body.is_empty() {
                continue;
            }
            let segments = body
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            rules.push(Rule {
                segments,
                dir_only,
                negated,
            });
        }
        IgnoreRules { rules }
    }

    /// Whether `relative_path` (slash-separated, relative to the context) is left out of the context.
    pub fn is_ignored(&self, relative_path: &str, is_dir: bool) -> bool {
        let path: Vec<&str> = relative_path.split('/').filter(|s| !s.is_empty()).collect();
        let mut ignored = false;
        for rule in &self.rules {
            if rule_matches(rule, &path, is_dir) {
                ignored = !rule.negated;
            }
        }
        ignored
    }
}

fn rule_matches(rule: &Rule, path: &[&str], is_dir: bool) -> bool {
    // A rule that matches a parent directory covers everything below it.
    (1..=path.len()).any(|len| {
        let prefix_is_dir = len < path.len() || is_dir;
        (!rule.dir_only || prefix_is_dir) && segments_match(&rule.segments, &path[..len])
    })
}

fn segments_match(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| segments_match(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                glob_segment(first.as_bytes(), segment.as_bytes())
                    && segments_match(rest, path_rest)
            }
            None => false,
        },
    }
}

fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_segment(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_segment(rest, &text[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => {
            text.first() == Some(&rest[0]) && glob_segment(&rest[1..], &text[1..])
        }
        Some((c, rest)) => text.first() == Some(c) && glob_segment(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_and_directories_exclude_their_contents() {
        let rules = IgnoreRules::parse("target\n.git/\n# comment\n\nsecret.env\n");
        assert!(rules.is_ignored("target", true));
        assert!(rules.is_ignored("target/debug/app", false));
        assert!(rules.is_ignored(".git/HEAD", false));
        assert!(rules.is_ignored("secret.env", false));
        assert!(!rules.is_ignored("src/main.rs", false));
        assert!(!rules.is_ignored("sub/secret.env", false));
    }

    #[test]
    fn trailing_slash_only_matches_directories() {
        let rules = IgnoreRules::parse("models/\n");
        assert!(!rules.is_ignored("models", false));
        assert!(rules.is_ignored("models", true));
        assert!(rules.is_ignored("models/a.gguf", false));
    }

    #[test]
    fn globs_stay_in_one_segment_unless_double_star() {
        let rules = IgnoreRules::parse("*.md\n**/*.tmp\n");
        assert!(rules.is_ignored("README.md", false));
        assert!(!rules.is_ignored("docs/guide.md", false));
        assert!(rules.is_ignored("a/b/c.tmp", false));
        assert!(rules.is_ignored("c.tmp", false));
    }

    #[test]
    fn negation_reincludes_and_last_rule_wins() {
        let rules = IgnoreRules::parse("*.md\n!KEEP.md\n");
        assert!(rules.is_ignored("README.md", false));
        assert!(!rules.is_ignored("KEEP.md", false));
    }
}
