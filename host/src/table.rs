//! Aligned text tables for the CLI (`dphost search --format table`,
//! `dphost status`): columns as wide as their widest cell, two spaces apart.

pub struct Columns<const N: usize>([usize; N]);

impl<const N: usize> Columns<N> {
    /// Widths that fit the header and every row.
    pub fn fit(header: [&str; N], rows: &[[String; N]]) -> Columns<N> {
        let mut widths = header.map(|h| h.chars().count());
        for row in rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        Columns(widths)
    }

    /// One line, without trailing spaces or newline.
    pub fn line(&self, cells: [&str; N]) -> String {
        cells
            .iter()
            .zip(self.0)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    }

    /// `line` for a row of owned cells.
    pub fn row(&self, cells: &[String; N]) -> String {
        self.line(cells.each_ref().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_the_widest_cell() {
        let rows = [["a".to_string(), "bbbb".to_string()]];
        let c = Columns::fit(["XX", "Y"], &rows);
        assert_eq!(c.line(["XX", "Y"]), "XX  Y");
        assert_eq!(c.row(&rows[0]), "a   bbbb");
    }
}
