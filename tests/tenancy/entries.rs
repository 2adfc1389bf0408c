//! Running one adversarial entry through pgwarden: simple query, prepared with
//! binary or text parameters, COPY out or in; and judging the outcome against the
//! entry's expectation.

use super::*;

/// How a prepared entry's parameters are sent: binary (as tokio-postgres does for
/// typed values) or text (as libpq-based drivers do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParamFormat {
    Binary,
    Text,
}

/// A parameter in text format: the server parses it as whatever type it inferred.
#[derive(Debug)]
pub(crate) struct TextParam(String);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

pub(crate) fn bind(param: &Param, ty: &Type, format: ParamFormat) -> Box<dyn ToSql + Sync> {
    let binary = format == ParamFormat::Binary;
    match param {
        Param::Null => Box::new(None::<TextParam>),
        Param::Int(v) if binary && *ty == Type::INT8 => Box::new(*v),
        Param::Int(v) if binary && *ty == Type::INT4 => Box::new(*v as i32),
        Param::Int(v) if binary && *ty == Type::INT2 => Box::new(*v as i16),
        Param::Text(s) if binary && <String as ToSql>::accepts(ty) => Box::new(s.clone()),
        Param::Int(v) => Box::new(TextParam(v.to_string())),
        Param::Text(s) => Box::new(TextParam(s.clone())),
    }
}

pub(crate) async fn run_prepared(
    client: &Client,
    entry: &Adversarial,
    format: ParamFormat,
) -> Result<Vec<Cell>, Error> {
    let statement = client.prepare(&entry.sql).await?;
    let values: Vec<Box<dyn ToSql + Sync>> = entry
        .params
        .iter()
        .zip(statement.params())
        .map(|(param, ty)| bind(param, ty, format))
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| &**v).collect();
    let rows = client.query(&statement, &refs).await?;
    Ok(rows.iter().flat_map(row_cells).collect())
}

pub(crate) async fn run_copy_out(client: &Client, sql: &str) -> Result<Vec<Cell>, Error> {
    let stream = client.copy_out(sql).await?;
    futures_util::pin_mut!(stream);
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?);
    }
    Ok(vec![Cell {
        column: "COPY".into(),
        text: String::from_utf8_lossy(&data).into_owned(),
    }])
}

pub(crate) async fn run_copy_in(
    client: &Client,
    sql: &str,
    data: &str,
) -> Result<Vec<Cell>, Error> {
    let sink = client.copy_in::<_, Bytes>(sql).await?;
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data.to_string())).await?;
    sink.finish().await?;
    Ok(Vec::new())
}

pub(crate) async fn run_entry(
    client: &Client,
    entry: &Adversarial,
    format: ParamFormat,
) -> Result<Vec<Cell>, Error> {
    match entry.protocol {
        Protocol::Simple => Ok(simple_cells(&client.simple_query(&entry.sql).await?)),
        Protocol::Prepared => run_prepared(client, entry, format).await,
        Protocol::CopyOut => run_copy_out(client, &entry.sql).await,
        Protocol::CopyIn => run_copy_in(client, &entry.sql, &entry.copy_data).await,
    }
}

/// What is wrong with an entry's outcome: the expectation, and any leaked value.
pub(crate) fn outcome_problems(expect: Expect, outcome: &Result<Vec<Cell>, Error>) -> Vec<String> {
    let mut problems = Vec::new();
    match (expect, outcome) {
        (Expect::Reject, Ok(_)) => {
            problems.push(format!(
                "expected a rejection ({INSUFFICIENT_PRIVILEGE}), but it ran"
            ));
        }
        (Expect::Reject, Err(e)) if sqlstate(e) != Some(INSUFFICIENT_PRIVILEGE) => {
            problems.push(format!(
                "expected a rejection ({INSUFFICIENT_PRIVILEGE}), got {}",
                describe(e)
            ));
        }
        (Expect::Ok, Err(e)) => problems.push(format!("expected success, got {}", describe(e))),
        _ => {}
    }
    match outcome {
        Ok(cells) => problems.extend(leaks(cells)),
        Err(e) => problems.extend(error_leak(e)),
    }
    problems
}
