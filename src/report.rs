//! How the commands show their results: the output formats and
//! plain-text tables.

/// An output format of `inspect`, `review` and `audit` (HTML: audit only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Html,
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_columns() {
        let out = super::table(
            &["A", "BB", "C"],
            &[
                ["long".into(), "x".into(), "last".into()],
                ["s".into(), "".into(), "".into()],
            ],
        );
        assert_eq!(out, "A     BB  C\nlong  x   last\ns\n");
    }
}
