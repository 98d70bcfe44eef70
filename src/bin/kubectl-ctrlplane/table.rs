//! Tables as kubectl prints them: upper-case headers, columns padded to
//! their widest cell and three spaces apart, no trailing spaces. Pure.

/// Formats `rows` under `headers`, each line indented by `indent` spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>], indent: usize) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = " ".repeat(indent);
        for (i, width) in widths.iter().enumerate() {
            let cell = row.get(i).map(String::as_str).unwrap_or("");
            line.push_str(cell);
            if i + 1 < columns {
                line.push_str(&" ".repeat(width - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cell for an absent value, as kubectl shows it.
pub const NONE: &str = "<none>";

/// Cuts `text` to at most `max` characters (one line), marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    let text = crate::error::one_line(text);
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(3)).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_three_spaces_apart() {
        let rows = vec![
            vec!["web".to_string(), "Running".to_string(), "2".to_string()],
            vec![
                "a-long-name".to_string(),
                "Stopped".to_string(),
                String::new(),
            ],
        ];
        assert_eq!(
            render(&["NAME", "PHASE", "REPLICAS"], &rows, 0),
            "NAME          PHASE     REPLICAS\nweb           Running   2\na-long-name   Stopped\n"
        );
        assert_eq!(
            render(&["A", "B"], &[vec!["x".into(), "y".into()]], 2),
            "  A   B\n  x   y\n"
        );
    }

    #[test]
    fn long_cells_are_cut_and_kept_on_one_line() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a\nb", 10), "a b");
        assert_eq!(truncate("0123456789abc", 10), "0123456...");
    }
}
