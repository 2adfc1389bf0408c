//! Advisories as rows of text: the columns `SHOW ADVISORIES` shows, and the plain-text
//! table `pgwarden advise` and the demo print.

use super::advisory::Advisory;

pub const COLUMNS: [&str; 8] = [
    "kind",
    "table",
    "columns",
    "confirmed",
    "score_ms_per_hour",
    "fingerprints",
    "action",
    "summary",
];

/// What to do: the DDL, or the rewrite for an N+1.
pub fn action(advisory: &Advisory) -> String {
    advisory
        .ddl
        .clone()
        .or_else(|| advisory.n_plus_one.as_ref().map(|n| n.rewrite.clone()))
        .unwrap_or_default()
}

pub fn row(advisory: &Advisory) -> Vec<String> {
    vec![
        advisory.kind.as_str().to_string(),
        advisory.table.clone().unwrap_or_default(),
        advisory.columns.join(", "),
        advisory.confirmed.to_string(),
        format!("{:.0}", advisory.score),
        advisory
            .fingerprints
            .iter()
            .map(|f| match &f.role {
                Some(role) => format!("{role} {}", f.id),
                None => format!("{} ({:.1}%)", f.id, 100.0 * f.share),
            })
            .collect::<Vec<_>>()
            .join("; "),
        action(advisory),
        advisory.summary.clone(),
    ]
}

/// A readable table: kind, table, columns, confirmed, score, and the action, one
/// advisory per line, followed by each advisory's summary.
pub fn text(advisories: &[Advisory]) -> String {
    if advisories.is_empty() {
        return "no advisories yet\n".to_string();
    }
    let header = [
        "#",
        "kind",
        "table",
        "columns",
        "confirmed",
        "ms saved/h",
        "action",
    ];
    let rows: Vec<Vec<String>> = advisories
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let confirmed = match (a.kind, a.confirmed) {
                (super::AdvisoryKind::Index, false) => "no (no hypopg)".to_string(),
                (_, c) => if c { "yes" } else { "no" }.to_string(),
            };
            vec![
                (i + 1).to_string(),
                a.kind.as_str().to_string(),
                a.table.clone().unwrap_or_else(|| "-".into()),
                a.columns.join(", "),
                confirmed,
                format!("{:.0}", a.score),
                action(a),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(header.len() - 1) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
    out.push('\n');
    for (i, a) in advisories.iter().enumerate() {
        out.push_str(&format!("{:>2}. {}\n", i + 1, a.summary));
    }
    out
}
