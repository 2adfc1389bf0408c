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
///
/// Any place may hold any family; new verdicts take the places in turn. (A family's
/// place was once its number modulo the places: two families a session alternates
/// between, such as pgbench's `INSERT` with a positive and with a negative delta,
/// then shared a place in some runs and were both scanned every time, about 1,300
/// instructions per TPC-B transaction.)
#[derive(Debug, Default)]
pub struct FamilyVerdicts(Option<Box<Places>>);

/// Families a session keeps verdicts for.
const FAMILY_VERDICTS: usize = 4;

#[derive(Debug, Default)]
struct Places {
    verdicts: [Option<FamilyVerdict>; FAMILY_VERDICTS],
    /// The place the next new verdict takes.
    next: usize,
}

#[derive(Debug, Clone, Copy)]
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
        let known = places.verdicts.iter().flatten().find(|verdict| {
            verdict.family == family && verdict.with_safe_functions == with_safe_functions
        });
        if let Some(verdict) = known {
            debug_assert_eq!(verdict.opaque, check.runs_opaque_code(sql));
            return verdict.opaque;
        }
        let opaque = check.runs_opaque_code(sql);
        places.verdicts[places.next] = Some(FamilyVerdict {
            family,
            with_safe_functions,
            opaque,
        });
        places.next = (places.next + 1) % FAMILY_VERDICTS;
        opaque
    }

    /// The families with a verdict, by place.
    #[cfg(test)]
    fn families(&self) -> Vec<u64> {
        self.0.as_ref().map_or(Vec::new(), |places| {
            places.verdicts.iter().flatten().map(|v| v.family).collect()
        })
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

    #[test]
    fn families_whose_numbers_share_a_remainder_keep_their_verdicts_together() {
        let safe = SessionSafeFunctions::from_answer(r#"["f"]"#).expect("names");
        let check = OpaqueCheck(Some(&safe));
        let mut verdicts = FamilyVerdicts::default();
        // Two families a session alternates between, then two more: all four kept.
        for family in [4, 8, 4, 8, 12, 16] {
            let family = Some(crate::scan::Family(family));
            assert!(!verdicts.runs_opaque_code(check, b"SELECT f(1)", family));
        }
        assert_eq!(verdicts.families(), [4, 8, 12, 16]);
        // A fifth takes the place of the oldest.
        let fifth = Some(crate::scan::Family(20));
        assert!(verdicts.runs_opaque_code(check, b"SELECT g(1)", fifth));
        assert_eq!(verdicts.families(), [20, 8, 12, 16]);
    }
}
