//! Whether a simple query runs code the proxy cannot see into, kept per text family:
//! the texts a session sends over and over with other numbers in them
//! (`crate::scan::Family`) are judged once (`opaque_code.rs` does the judging).

use super::opaque_code::OpaqueCheck;

/// A session's verdicts of [`OpaqueCheck::runs_opaque_code`] for the text families
/// (`crate::scan::Family`) it sent lately. The call scan of `opaque_code.rs` treats
/// every digit alike (a number is tokens it never names, and it ends where the same
/// byte ends it), so every text of a family has the verdict of the first one. Each verdict is kept with
/// whether the safe-function names were known, as in `UnnamedVerdicts`: they only
/// ever go from unknown to known in a session. Allocated at the first family.
#[derive(Debug, Default)]
pub struct FamilyVerdicts(Option<Box<[FamilyVerdict; FAMILY_VERDICTS]>>);

/// Families a session keeps verdicts for (by family number, one per place).
const FAMILY_VERDICTS: usize = 4;

#[derive(Debug, Default, Clone, Copy)]
struct FamilyVerdict {
    family: u64,
    with_safe_functions: bool,
    opaque: bool,
}

impl FamilyVerdicts {
    /// `check.runs_opaque_code(sql)`, from the verdict of `sql`'s family when known.
    pub fn runs_opaque_code(
        &mut self,
        check: OpaqueCheck<'_>,
        sql: &[u8],
        family: Option<crate::scan::Family>,
    ) -> bool {
        let Some(crate::scan::Family(family)) = family else {
            return check.runs_opaque_code(sql);
        };
        let with_safe_functions = check.0.is_some();
        let places = self.0.get_or_insert_with(Default::default);
        let place = &mut places[(family % FAMILY_VERDICTS as u64) as usize];
        if place.family == family && place.with_safe_functions == with_safe_functions {
            debug_assert_eq!(place.opaque, check.runs_opaque_code(sql));
            return place.opaque;
        }
        let opaque = check.runs_opaque_code(sql);
        *place = FamilyVerdict {
            family,
            with_safe_functions,
            opaque,
        };
        opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::opaque_code::SessionSafeFunctions;

    #[test]
    fn a_family_verdict_is_kept_with_whether_safe_names_were_known() {
        let mut verdicts = FamilyVerdicts::default();
        let family = Some(crate::scan::Family(7));
        let safe = SessionSafeFunctions::from_answer(r#"["my_func"]"#).expect("names");
        // Names unknown: every call counts.
        assert!(verdicts.runs_opaque_code(OpaqueCheck(None), b"SELECT my_func(1)", family));
        assert!(verdicts.runs_opaque_code(OpaqueCheck(None), b"SELECT my_func(2)", family));
        // Known now: judged again, and kept for the family.
        let check = OpaqueCheck(Some(&safe));
        assert!(!verdicts.runs_opaque_code(check, b"SELECT my_func(1)", family));
        assert!(!verdicts.runs_opaque_code(check, b"SELECT my_func(33)", family));
        // Another family, or none: its own verdict.
        let other = Some(crate::scan::Family(8));
        assert!(verdicts.runs_opaque_code(check, b"SELECT other_func(1)", other));
        assert!(verdicts.runs_opaque_code(check, b"SELECT other_func(1)", None));
        assert!(!verdicts.runs_opaque_code(check, b"SELECT my_func(4)", family));
    }
}
