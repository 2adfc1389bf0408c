//! SQL text assembled from fuzzer bytes: every byte picks the next grammar choice
//! (statement kind, table, alias, join, subquery, set operation, CTE, predicate), so
//! the rewriter target explores statement structure instead of failing to parse
//! random bytes. The tables are those of [`crate::tenant::sample_catalog`].

/// The next choices, read from the input; all zeros once the input is used up.
struct Choices<'a> {
    data: &'a [u8],
    at: usize,
}

impl Choices<'_> {
    fn pick(&mut self, count: usize) -> usize {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte as usize % count
    }

    fn one<'s>(&mut self, options: &[&'s str]) -> &'s str {
        options[self.pick(options.len())]
    }
}

const TABLES: &[&str] = &[
    "orders",
    "customers",
    "billing.invoices",
    "products",
    "summary",
    "public.orders",
    "\"orders\"",
    "ORDERS",
    "public.customers",
    "invoices",
];
const ALIASES: &[&str] = &["", " o", " AS c", " x", " \"O\"", " orders", " customers"];
const COLUMNS: &[&str] = &[
    "id",
    "tenant_id",
    "customer_id",
    "total",
    "name",
    "amount",
    "*",
];
const VALUES: &[&str] = &["1", "2", "'1'", "NULL", "$1", "1 + 1", "(SELECT 2)"];
const COMPARISONS: &[&str] = &["=", "<>", ">", "IS NOT DISTINCT FROM", "IN (1, 2) AND 1 ="];

/// A statement text (sometimes several, separated by `;`) built from `data`.
pub fn sql_from_bytes(data: &[u8]) -> String {
    let mut choices = Choices { data, at: 0 };
    let mut sql = statement(&mut choices, 0);
    while choices.at < data.len() && choices.pick(4) == 0 {
        sql.push_str("; ");
        sql.push_str(&statement(&mut choices, 0));
    }
    sql
}

fn statement(c: &mut Choices<'_>, depth: usize) -> String {
    match c.pick(8) {
        0..=3 => query(c, depth),
        4 => {
            let table = c.one(TABLES);
            match c.pick(3) {
                0 => format!(
                    "INSERT INTO {table} (id, tenant_id) VALUES ({}, {})",
                    c.one(VALUES),
                    c.one(VALUES)
                ),
                1 => format!("INSERT INTO {table} (id) {}", query(c, depth + 1)),
                _ => format!("INSERT INTO {table} SELECT * FROM {}", c.one(TABLES)),
            }
        }
        5 => {
            let from = if c.pick(2) == 0 {
                format!(" FROM {}{}", c.one(TABLES), c.one(ALIASES))
            } else {
                String::new()
            };
            format!(
                "UPDATE {}{} SET {} = {}{from}{}",
                c.one(TABLES),
                c.one(ALIASES),
                c.one(&["total", "tenant_id", "name"]),
                c.one(VALUES),
                filter(c, depth)
            )
        }
        6 => {
            let using = if c.pick(2) == 0 {
                format!(" USING {}{}", c.one(TABLES), c.one(ALIASES))
            } else {
                String::new()
            };
            format!(
                "DELETE FROM {}{}{using}{}",
                c.one(TABLES),
                c.one(ALIASES),
                filter(c, depth)
            )
        }
        _ => with_ctes(c, depth),
    }
}

fn with_ctes(c: &mut Choices<'_>, depth: usize) -> String {
    let name = c.one(&["t", "orders", "customers", "recent"]);
    let recursive = if c.pick(4) == 0 { "RECURSIVE " } else { "" };
    let body = query(c, depth + 1);
    let main = match c.pick(3) {
        0 => format!("SELECT * FROM {name}{}", filter(c, depth)),
        1 => format!(
            "SELECT * FROM {name} JOIN {} ON true{}",
            c.one(TABLES),
            filter(c, depth)
        ),
        _ => query(c, depth + 1),
    };
    format!("WITH {recursive}{name} AS ({body}) {main}")
}

fn query(c: &mut Choices<'_>, depth: usize) -> String {
    let mut sql = select(c, depth);
    if depth < 3 {
        match c.pick(6) {
            0 => sql = format!("{sql} UNION {}", select(c, depth + 1)),
            1 => sql = format!("{sql} UNION ALL {}", select(c, depth + 1)),
            2 => sql = format!("{sql} EXCEPT {}", select(c, depth + 1)),
            _ => {}
        }
    }
    sql
}

fn select(c: &mut Choices<'_>, depth: usize) -> String {
    let distinct = c.one(&["", "DISTINCT ", "DISTINCT ON (id) "]);
    let target = match c.pick(6) {
        0 => "count(*)".to_string(),
        1 if depth < 3 => format!("({})", scalar_subquery(c, depth + 1)),
        2 => "sum(total) OVER (PARTITION BY tenant_id)".to_string(),
        _ => c.one(COLUMNS).to_string(),
    };
    let tail = c.one(&[
        "",
        " ORDER BY 1",
        " LIMIT 5",
        " GROUP BY 1",
        " GROUP BY 1 HAVING count(*) > 0",
        " FOR UPDATE",
    ]);
    format!(
        "SELECT {distinct}{target} FROM {}{}{tail}",
        from_item(c, depth),
        filter(c, depth)
    )
}

fn scalar_subquery(c: &mut Choices<'_>, depth: usize) -> String {
    format!(
        "SELECT {} FROM {}{}",
        c.one(&["count(*)", "max(id)", "min(tenant_id)"]),
        from_item(c, depth),
        filter(c, depth)
    )
}

fn from_item(c: &mut Choices<'_>, depth: usize) -> String {
    let base = |c: &mut Choices<'_>| format!("{}{}", c.one(TABLES), c.one(ALIASES));
    match c.pick(9) {
        0 if depth < 3 => format!("({}) sub", query(c, depth + 1)),
        1 if depth < 3 => format!(
            "{} {} {} ON {}",
            base(c),
            c.one(&["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]),
            base(c),
            c.one(&[
                "true",
                "orders.id = customers.id",
                "o.customer_id = c.id",
                "1 = 1"
            ])
        ),
        2 => format!("{}, {}", base(c), base(c)),
        3 if depth < 3 => format!(
            "{}, LATERAL ({}) lat",
            base(c),
            scalar_subquery(c, depth + 1)
        ),
        4 => format!("{} CROSS JOIN {}", base(c), base(c)),
        5 => format!("{} NATURAL JOIN {}", base(c), base(c)),
        _ => base(c),
    }
}

fn filter(c: &mut Choices<'_>, depth: usize) -> String {
    let column = c.one(&[
        "id",
        "tenant_id",
        "o.tenant_id",
        "orders.tenant_id",
        "total",
    ]);
    let predicate = match c.pick(8) {
        0 => return String::new(),
        1 => format!("{column} {} {}", c.one(COMPARISONS), c.one(VALUES)),
        2 => format!("{column} = 1 OR true"),
        3 if depth < 3 => format!("EXISTS ({})", scalar_subquery(c, depth + 1)),
        4 if depth < 3 => format!("id IN ({})", select(c, depth + 1)),
        5 => format!("NOT ({column} = {})", c.one(VALUES)),
        6 => format!("{column} = ANY(ARRAY[1, 2])"),
        _ => format!("{column} = {}", c.one(VALUES)),
    };
    format!(" WHERE {predicate}")
}
