//! Table and info-block rendering with the real CLI's layout: columns left-justified, joined by two
//! spaces, the last column never padded (so an empty last cell leaves two trailing spaces).

/// Renders a header row plus one row per item.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows.iter()) {
        let mut line = String::new();
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < columns {
                let pad = width - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Renders `Header  value` rows with headers padded to the longest; multi-line values continue
/// indented by the header width plus two spaces.
pub fn render_info(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(h, _)| h.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (header, value) in rows {
        let mut lines = value.split('\n');
        let first = lines.next().unwrap_or("");
        out.push_str(&format!("{header:<width$}  {first}\n"));
        for more in lines {
            out.push_str(&format!("{:width$}  {more}\n", ""));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_column_is_unpadded_and_empty_last_cell_leaves_two_spaces() {
        let out = render_table(
            &["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"],
            &[
                vec![
                    "release1".into(),
                    "active".into(),
                    "build1".into(),
                    "2 days ago".into(),
                    "description1".into(),
                ],
                vec![
                    "release2".into(),
                    "".into(),
                    "build1".into(),
                    "2 days ago".into(),
                    "".into(),
                ],
            ],
        );
        assert_eq!(
            out,
            "ID        STATUS  BUILD   CREATED     DESCRIPTION\n\
             release1  active  build1  2 days ago  description1\n\
             release2          build1  2 days ago  \n"
        );
    }

    #[test]
    fn header_only_table_when_no_rows() {
        assert_eq!(
            render_table(&["APP", "STATUS", "RELEASE"], &[]),
            "APP  STATUS  RELEASE\n"
        );
    }

    #[test]
    fn info_pads_headers_and_indents_continuation_lines() {
        let out = render_info(&[("Id", "R1".into()), ("Env", "A=1\nB=2".into())]);
        assert_eq!(out, "Id   R1\nEnv  A=1\n     B=2\n");
    }
}
