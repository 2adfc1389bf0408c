//! `SHOW ADVISORIES`: the advisors' current advice, highest score first.

use super::tables::Table;
use crate::advise::render;
use crate::runtime::Runtime;

pub fn table(runtime: &Runtime) -> Table {
    let mut table = Table::new(&render::COLUMNS);
    for advisory in runtime.advisors.list() {
        table.rows.push(render::row(&advisory));
    }
    table
}
