//! `convox logs --filter` matching, CloudWatch-style: space-separated terms that must all appear,
//! with `"double quoted phrases"` kept as one term.

/// A parsed filter; an empty filter matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogFilter {
    terms: Vec<String>,
}

impl LogFilter {
    pub fn parse(text: &str) -> LogFilter {
        let mut terms = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for c in text.chars() {
            match c {
                '"' => {
                    if quoted && !current.is_empty() {
                        terms.push(std::mem::take(&mut current));
                    }
                    quoted = !quoted;
                }
                c if c.is_whitespace() && !quoted => {
                    if !current.is_empty() {
                        terms.push(std::mem::take(&mut current));
                    }
                }
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            terms.push(current);
        }
        LogFilter { terms }
    }

    pub fn matches(&self, line: &str) -> bool {
        self.terms.iter().all(|term| line.contains(term.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_term_must_appear() {
        let f = LogFilter::parse("ERROR inference");
        assert!(f.matches("ERROR inference failed"));
        assert!(!f.matches("ERROR only"));
    }

    #[test]
    fn quoted_phrase_is_one_term() {
        let f = LogFilter::parse("\"tensor shape\" ERROR");
        assert!(f.matches("ERROR inference failed: tensor shape mismatch"));
        assert!(!f.matches("ERROR shape tensor"));
    }

    #[test]
    fn empty_filter_matches_all() {
        assert!(LogFilter::parse("  ").matches("anything"));
    }
}
