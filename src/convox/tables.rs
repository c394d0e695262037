//! Parsers for what `convox` prints: tables (by the header's column offsets, because cells can be
//! empty and the last column is unpadded), info blocks, and bare ids.

use std::collections::HashMap;

/// One table row, addressed by header name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(HashMap<String, String>);

impl Row {
    /// The cell under `column`; empty when the cell is blank or the column is absent.
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map_or("", String::as_str)
    }
}

/// A table with unparseable shape (no header, or a header missing a column we need).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected `convox` output: {0}")]
pub struct ParseError(pub String);

/// Parses a convox table. Columns start where their header word starts; a cell runs to the
/// next column's start (the last to the end of the line), so empty middle cells and trailing
/// spaces come out as empty strings rather than shifting the cells after them.
pub fn parse_table(text: &str, required: &[&str]) -> Result<Vec<Row>, ParseError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Err(ParseError("expected a table, got no output".into()));
    };
    let columns = header_columns(header);
    for want in required {
        if !columns.iter().any(|(name, _)| name == want) {
            return Err(ParseError(format!(
                "table header `{}` has no {want} column",
                header.trim_end()
            )));
        }
    }
    Ok(lines
        .map(|line| {
            let chars: Vec<char> = line.chars().collect();
            let mut cells = HashMap::new();
            for (i, (name, start)) in columns.iter().enumerate() {
                let end = columns.get(i + 1).map_or(chars.len(), |(_, s)| *s);
                let cell: String = chars
                    .get(*start.min(&chars.len())..end.min(chars.len()))
                    .map(|c| c.iter().collect())
                    .unwrap_or_default();
                cells.insert(name.clone(), cell.trim().to_string());
            }
            Row(cells)
        })
        .collect())
}

/// Header words and their character offsets. Headers are single words except a few known
/// two-word ones (`NLB PORTS`), which the two-space column join keeps apart.
fn header_columns(header: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = header.chars().collect();
    let mut columns = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == ' ' {
            i += 1;
            continue;
        }
        let start = i;
        // A column name ends at two spaces (or the end); one space stays inside the name.
        while i < chars.len() && !(chars[i] == ' ' && chars.get(i + 1).is_none_or(|c| *c == ' ')) {
            i += 1;
        }
        columns.push((chars[start..i].iter().collect::<String>(), start));
    }
    columns
}

/// Parses an info block (`Header  value`, continuation lines indented) into key → value.
pub fn parse_info(text: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(' ') {
            if let Some(key) = &last {
                let v = out.entry(key.clone()).or_default();
                v.push('\n');
                v.push_str(line.trim());
            }
            continue;
        }
        let (key, value) = match line.split_once("  ") {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line.trim(), ""),
        };
        out.insert(key.to_string(), value.to_string());
        last = Some(key.to_string());
    }
    out
}

/// A release or build id as printed by `--id`: `R` or `B` and 10 uppercase letters in the real
/// CLI; we accept any non-empty run of id characters and refuse anything else.
pub fn parse_id(stdout: &str) -> Result<String, ParseError> {
    let id = stdout.trim();
    if !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(id.to_string())
    } else {
        Err(ParseError(format!(
            "expected a bare id on stdout, got `{}`",
            truncate(id, 80)
        )))
    }
}

/// Pulls the release id out of `Importing build... OK, RXXXX` or `Rolling back to X... OK, RYYY`.
pub fn id_after_ok(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .find_map(|l| l.rsplit_once("OK, ").map(|(_, id)| id.trim().to_string()))
        .filter(|id| !id.is_empty())
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From the real CLI's tests (pkg/cli/releases_test.go): the last column of an empty
    // description leaves two trailing spaces.
    const RELEASES: &str = "ID        STATUS  BUILD   CREATED     DESCRIPTION\n\
                            release1  active  build1  2 days ago  description1\n\
                            release2          build1  2 days ago  \n";

    #[test]
    fn releases_table_with_empty_cells_and_trailing_spaces() {
        let rows = parse_table(RELEASES, &["ID", "STATUS", "BUILD"]).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].get("STATUS"), "active");
        assert_eq!(rows[0].get("DESCRIPTION"), "description1");
        assert_eq!(rows[1].get("ID"), "release2");
        assert_eq!(rows[1].get("STATUS"), "");
        assert_eq!(rows[1].get("BUILD"), "build1");
        assert_eq!(rows[1].get("DESCRIPTION"), "");
    }

    #[test]
    fn scale_table_with_dash_and_empty_status() {
        let text = "SERVICE    DESIRED  RUNNING  CPU  MEMORY  GPU  MIN  MAX  STATUS\n\
                    inference  2        2        256  1024    -    2    6    \n";
        let rows = parse_table(text, &["SERVICE", "DESIRED", "RUNNING"]).unwrap();
        assert_eq!(rows[0].get("RUNNING"), "2");
        assert_eq!(rows[0].get("GPU"), "-");
        assert_eq!(rows[0].get("STATUS"), "");
    }

    #[test]
    fn services_table_domain_and_two_word_header() {
        let text = "SERVICE    DOMAIN           PORTS     NLB PORTS  SCALE  AUTOSCALE\n\
                    inference  127.0.0.1:41234  443:8080             2-6    cpu>70\n";
        let rows = parse_table(text, &["SERVICE", "DOMAIN"]).unwrap();
        assert_eq!(rows[0].get("DOMAIN"), "127.0.0.1:41234");
        assert_eq!(rows[0].get("NLB PORTS"), "");
        assert_eq!(rows[0].get("SCALE"), "2-6");
    }

    #[test]
    fn ps_table() {
        let text = "ID                         SERVICE    STATUS   RELEASE      STARTED         COMMAND\n\
                    inference-5d8f9c7b6-abcde  inference  running  RABCDEFGHIJ  2 minutes ago   \n\
                    inference-5d8f9c7b6-fghij  inference  crashed  RABCDEFGHIJ  10 seconds ago  acme-infer\n";
        let rows = parse_table(text, &["ID", "STATUS"]).unwrap();
        assert_eq!(rows[0].get("COMMAND"), "");
        assert_eq!(rows[1].get("STATUS"), "crashed");
        assert_eq!(rows[1].get("COMMAND"), "acme-infer");
    }

    #[test]
    fn missing_column_and_empty_output_are_errors() {
        assert!(parse_table("", &["ID"]).is_err());
        let e = parse_table("NAME  STATUS\nx  y\n", &["ID"]).unwrap_err();
        assert!(e.0.contains("no ID column"), "{e}");
    }

    #[test]
    fn info_block_with_continuation() {
        let text = "Id           RABCDEFGHIJ\nBuild        BKLMNOPQRST\nCreated      2026-03-18T15:37:38Z\nDescription  build 1\nEnv          A=1\n             B=2\n";
        let info = parse_info(text);
        assert_eq!(info["Build"], "BKLMNOPQRST");
        assert_eq!(info["Env"], "A=1\nB=2");
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("RABCDEFGHIJ").unwrap(), "RABCDEFGHIJ");
        assert!(parse_id("").is_err());
        assert!(parse_id("Promoting R... OK").is_err());
        assert_eq!(
            id_after_ok("Importing build... OK, RQWERTYUIOP\n").as_deref(),
            Some("RQWERTYUIOP")
        );
        assert_eq!(
            id_after_ok("Rolling back to release2... OK, release3\nPromoting release3... \nOK\n")
                .as_deref(),
            Some("release3")
        );
    }
}
