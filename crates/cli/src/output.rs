//! How the CLI writes: Convox's stdcli conventions. Progress lines
//! (`Packaging source... OK`), tables padded to their widest cell with the
//! last column left unpadded, info blocks, and `--id` mode, in which all of
//! that goes to stderr and stdout gets only the id, without a newline.

use std::io::Write as _;

/// Where normal output goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    /// `--id`: progress to stderr, only the id to stdout.
    id_mode: bool,
}

impl Output {
    /// Output to stdout, or with `id_mode` to stderr.
    pub(crate) fn new(id_mode: bool) -> Self {
        Self { id_mode }
    }

    /// Writes `text` as is to the progress stream and flushes it.
    pub(crate) fn write(&self, text: &str) -> std::io::Result<()> {
        self.write_bytes(text.as_bytes())
    }

    /// Writes raw bytes (log chunks) to the progress stream.
    pub(crate) fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        if self.id_mode {
            let mut err = std::io::stderr().lock();
            err.write_all(bytes)?;
            err.flush()
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)?;
            out.flush()
        }
    }

    /// A whole line.
    pub(crate) fn line(&self, text: &str) -> std::io::Result<()> {
        self.write(&format!("{text}\n"))
    }

    /// Starts a step: `text... ` with no newline, finished by [`Output::ok`].
    pub(crate) fn start(&self, text: &str) -> std::io::Result<()> {
        self.write(&format!("{text}... "))
    }

    /// Ends a step: `OK`.
    pub(crate) fn ok(&self) -> std::io::Result<()> {
        self.line("OK")
    }

    /// Prints the id a `--id` command returns (stdout, no newline), when in id mode.
    pub(crate) fn id(&self, id: &str) -> std::io::Result<()> {
        if self.id_mode {
            let mut out = std::io::stdout().lock();
            out.write_all(id.as_bytes())?;
            out.flush()?;
        }
        Ok(())
    }
}

/// Prints to stdout (tables, info blocks, values).
pub(crate) fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// A table: every column but the last padded to its widest cell (header
/// included), columns joined by two spaces; one line per row plus the header.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = (0..columns)
            .map(|i| {
                let cell = row.get(i).map_or("", String::as_str);
                if i + 1 == columns {
                    cell.to_owned()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// An info block: each header padded to the longest, two spaces, the value;
/// lines after the first of a value are indented to line up.
pub(crate) fn info(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(h, _)| h.chars().count())
        .max()
        .unwrap_or(0);
    let indent = format!("\n{}", " ".repeat(width + 2));
    rows.iter()
        .map(|(header, value)| format!("{header:<width$}  {}\n", value.replace('\n', &indent)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| (*c).to_owned()).collect()
    }

    #[test]
    fn tables_pad_all_but_the_last_column() {
        let text = table(
            &["ID", "STATUS", "BUILD", "CREATED", "DESCRIPTION"],
            &[
                row(&[
                    "RCDEFGHIJK",
                    "",
                    "BABCDEFGHI",
                    "1 minute ago",
                    "env add:FOO",
                ]),
                row(&[
                    "RBCDEFGHIJ",
                    "active",
                    "BABCDEFGHI",
                    "5 minutes ago",
                    "build 0a1b2c3d4e5f my commit message",
                ]),
            ],
        );
        assert_eq!(
            text,
            "ID          STATUS  BUILD       CREATED        DESCRIPTION\n\
             RCDEFGHIJK          BABCDEFGHI  1 minute ago   env add:FOO\n\
             RBCDEFGHIJ  active  BABCDEFGHI  5 minutes ago  build 0a1b2c3d4e5f my commit message\n"
        );
    }

    #[test]
    fn empty_last_cells_leave_trailing_spaces() {
        let text = table(
            &["APP", "STATUS", "RELEASE"],
            &[row(&["myapp", "running", ""])],
        );
        assert_eq!(text, "APP    STATUS   RELEASE\nmyapp  running  \n");
    }

    #[test]
    fn empty_tables_print_the_header() {
        assert_eq!(
            table(&["APP", "STATUS", "RELEASE"], &[]),
            "APP  STATUS  RELEASE\n"
        );
    }

    #[test]
    fn info_blocks_indent_continuation_lines() {
        let text = info(&[
            ("Id", "RPUSJXVITCF".into()),
            ("Build", "BZFEEKRWUIM".into()),
            ("Created", "2026-11-23T06:22:44Z".into()),
            ("Description", "env add:FROMOLD".into()),
            ("Env", "BAR=baz\nFOO=bar\nFROMOLD=1".into()),
        ]);
        assert_eq!(
            text,
            "Id           RPUSJXVITCF\n\
             Build        BZFEEKRWUIM\n\
             Created      2026-11-23T06:22:44Z\n\
             Description  env add:FROMOLD\n\
             Env          BAR=baz\n             FOO=bar\n             FROMOLD=1\n"
        );
    }

    #[test]
    fn info_blocks_keep_empty_values() {
        assert_eq!(
            info(&[("Name", "dev".into()), ("Region", String::new())]),
            "Name    dev\nRegion  \n"
        );
    }
}
