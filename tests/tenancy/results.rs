//! What a statement returned, as text cells, and how the adversarial test spots
//! another tenant's data in them (and in error messages).

use super::*;

pub(crate) type Rows = Vec<Vec<Option<String>>>;

/// The rows of every result of a simple query, as text.
pub(crate) async fn text_rows(client: &Client, sql: &str) -> Result<Rows, Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(String::from))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

pub(crate) fn sqlstate(error: &Error) -> Option<&str> {
    error.code().map(|code| code.code())
}

pub(crate) fn describe(error: &Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("error {}: {}", db.code().code(), shorten(db.message(), 160)),
        None => format!("error: {error}"),
    }
}

pub(crate) fn assert_rejected<T>(result: Result<T, Error>, what: &str) {
    match result {
        Ok(_) => panic!("{what}: expected a rejection with {INSUFFICIENT_PRIVILEGE}, it ran"),
        Err(e) => assert_eq!(
            sqlstate(&e),
            Some(INSUFFICIENT_PRIVILEGE),
            "{what}: {}",
            describe(&e)
        ),
    }
}

/// One returned value as text, with the name of its column.
pub(crate) struct Cell {
    pub(crate) column: String,
    pub(crate) text: String,
}

pub(crate) fn simple_cells(messages: &[SimpleQueryMessage]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            for (i, column) in row.columns().iter().enumerate() {
                if let Some(text) = row.get(i) {
                    cells.push(Cell {
                        column: column.name().to_string(),
                        text: text.to_string(),
                    });
                }
            }
        }
    }
    cells
}

/// Any value in binary format, kept as its bytes: text inside records, arrays and
/// jsonb stays readable, so the markers can be found in it.
pub(crate) struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

pub(crate) fn row_cells(row: &tokio_postgres::Row) -> Vec<Cell> {
    let text = |i: usize, ty: &Type| match *ty {
        Type::INT2 => row.get::<_, Option<i16>>(i).map(|v| v.to_string()),
        Type::INT4 => row.get::<_, Option<i32>>(i).map(|v| v.to_string()),
        Type::INT8 => row.get::<_, Option<i64>>(i).map(|v| v.to_string()),
        _ => row
            .get::<_, Option<Raw>>(i)
            .map(|raw| String::from_utf8_lossy(&raw.0).into_owned()),
    };
    row.columns()
        .iter()
        .enumerate()
        .filter_map(|(i, column)| {
            Some(Cell {
                column: column.name().to_string(),
                text: text(i, column.type_())?,
            })
        })
        .collect()
}

/// What in a returned value belongs to another tenant, if anything does.
pub(crate) fn leak_in(cell: &Cell) -> Option<String> {
    if let Some(at) = OTHER_TENANT_MARKERS.iter().find_map(|m| cell.text.find(m)) {
        return Some(format!(
            "{:?} in column {}",
            excerpt(&cell.text, at),
            cell.column
        ));
    }
    let number: i64 = cell.text.trim().parse().ok()?;
    if cell.column == "tenant_id" && number != TENANT {
        return Some(format!("tenant_id {number}"));
    }
    let id_column = cell.column == "id" || cell.column.ends_with("_id");
    (id_column && OTHER_TENANT_IDS.contains(&number))
        .then(|| format!("id {number} in column {}", cell.column))
}

/// Up to 30 characters either side of byte `at`, on one line.
pub(crate) fn excerpt(text: &str, at: usize) -> String {
    let start = text[..at]
        .char_indices()
        .rev()
        .nth(29)
        .map_or(0, |(i, _)| i);
    let end = text[at..]
        .char_indices()
        .nth(30)
        .map_or(text.len(), |(i, _)| at + i);
    let dots = |cut: bool| if cut { "..." } else { "" };
    let middle = text[start..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    format!("{}{middle}{}", dots(start > 0), dots(end < text.len()))
}

/// One line about the values of other tenants among `cells`, if there are any.
pub(crate) fn leaks(cells: &[Cell]) -> Option<String> {
    let found: Vec<String> = cells.iter().filter_map(leak_in).collect();
    let examples: Vec<&str> = found.iter().take(3).map(String::as_str).collect();
    (!found.is_empty()).then(|| {
        format!(
            "returned {} of other tenants, e.g. {}",
            match found.len() {
                1 => "a value".to_string(),
                n => format!("{n} values"),
            },
            examples.join("; ")
        )
    })
}

/// An error message can carry values too (`invalid input syntax: "Bob@t2"`).
pub(crate) fn error_leak(error: &Error) -> Option<String> {
    let db = error.as_db_error()?;
    let text = [Some(db.message()), db.detail(), db.hint(), db.where_()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" / ");
    let at = OTHER_TENANT_MARKERS.iter().find_map(|m| text.find(m))?;
    Some(format!(
        "its error reveals another tenant's data: {:?}",
        excerpt(&text, at)
    ))
}

pub(crate) fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max) {
        Some((at, _)) => format!("{}...", &one_line[..at]),
        None => one_line,
    }
}
