//! The rewrite an N+1 advisory proposes: the column the child statement looks up one
//! value of (`col = ?` in its WHERE), so the loop becomes one `col = ANY($1)` query,
//! or a join with the parent. Works on the normalized text (parameters are `?`).

/// `(table, column)` of the child's first `column = ?` predicate.
pub fn lookup_column(query: &str) -> Option<(Option<String>, String)> {
    let tokens: Vec<&str> = query.split_whitespace().collect();
    let table = tokens
        .iter()
        .position(|t| *t == "from")
        .and_then(|i| tokens.get(i + 1))
        .map(|t| t.trim_matches(|c| c == '(' || c == ')').to_string())
        .filter(|t| !t.is_empty());
    let where_at = tokens.iter().position(|t| *t == "where")?;
    let rest = &tokens[where_at + 1..];
    for (i, pair) in rest.windows(3).enumerate() {
        if pair[1] == "=" && pair[2] == "?" && is_column(pair[0]) {
            return Some((table, strip_qualifier(pair[0])));
        }
        let _ = i;
    }
    None
}

fn is_column(token: &str) -> bool {
    !token.is_empty()
        && token
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '"')
        && !token.chars().next().is_some_and(|c| c.is_ascii_digit())
}

fn strip_qualifier(token: &str) -> String {
    token
        .rsplit('.')
        .next()
        .unwrap_or(token)
        .trim_matches('"')
        .to_string()
}

/// The sentence an advisory shows.
pub fn rewrite(child_query: &str, parent_query: &str) -> (Option<String>, String) {
    match lookup_column(child_query) {
        Some((table, column)) => {
            let batched = batch_text(child_query, &column);
            let join = match &table {
                Some(table) => format!(", or join {table} on {column} into the parent query"),
                None => String::new(),
            };
            (
                Some(column.clone()),
                format!(
                    "run once per request: `{batched}` with every {column} the parent returned as one array{join}"
                ),
            )
        }
        None => (
            None,
            format!("fetch the children together with the parent: join them into `{parent_query}`"),
        ),
    }
}

/// The child's text with `column = ?` turned into `column = ANY($1)`.
fn batch_text(child_query: &str, column: &str) -> String {
    let tokens: Vec<&str> = child_query.split_whitespace().collect();
    let mut out: Vec<String> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    let mut done = false;
    while i < tokens.len() {
        if !done
            && i + 2 < tokens.len()
            && strip_qualifier(tokens[i]) == column
            && tokens[i + 1] == "="
            && tokens[i + 2] == "?"
        {
            out.push(format!("{} = any($1)", tokens[i]));
            i += 3;
            done = true;
            continue;
        }
        out.push(tokens[i].to_string());
        i += 1;
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_looked_up_column() {
        assert_eq!(
            lookup_column("select id , body from comments where post_id = ?"),
            Some((Some("comments".into()), "post_id".into()))
        );
        assert_eq!(
            lookup_column(
                "select * from comments c where c.deleted = false and c.post_id = ? order by id"
            ),
            Some((Some("comments".into()), "post_id".into()))
        );
        assert_eq!(lookup_column("select * from comments"), None);
        let (column, text) = rewrite(
            "select * from comments where post_id = ?",
            "select id from posts",
        );
        assert_eq!(column.as_deref(), Some("post_id"));
        assert!(text.contains("post_id = any($1)"), "{text}");
    }
}
