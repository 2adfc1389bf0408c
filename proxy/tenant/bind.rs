//! Checks, at Bind, the parameters a statement compares with or writes into the
//! tenant column (`WHERE tenant_id = $1`, `INSERT ... VALUES ($1, ...)`).
//! Only these parameters are decoded; the rest of the message is left alone.

use crate::config::TenantValueType;

use super::policy::same_tenant;

/// The part of a Bind message after the portal and statement names.
struct Params<'a> {
    formats: Vec<i16>,
    values: Vec<Option<&'a [u8]>>,
}

fn read_i16(bytes: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn parse(rest: &[u8]) -> Option<Params<'_>> {
    let mut at = 0;
    let format_count = usize::try_from(read_i16(rest, at)?).ok()?;
    at += 2;
    let mut formats = Vec::with_capacity(format_count);
    for _ in 0..format_count {
        formats.push(read_i16(rest, at)?);
        at += 2;
    }
    let count = usize::try_from(read_i16(rest, at)?).ok()?;
    at += 2;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_i32(rest, at)?;
        at += 4;
        if len < 0 {
            values.push(None);
        } else {
            let len = len as usize;
            values.push(Some(rest.get(at..at + len)?));
            at += len;
        }
    }
    Some(Params { formats, values })
}

/// True when every listed (1-based) parameter equals `tenant`. Malformed messages,
/// NULLs, missing parameters and undecodable binary values are not the tenant.
pub fn params_are_tenant(
    rest: &[u8],
    indices: &[usize],
    value_type: TenantValueType,
    tenant: &str,
) -> bool {
    let Some(params) = parse(rest) else {
        return false;
    };
    indices.iter().all(|&n| {
        let Some(Some(value)) = n.checked_sub(1).and_then(|i| params.values.get(i)) else {
            return false;
        };
        let format = match params.formats.len() {
            0 => 0,
            1 => params.formats[0],
            _ => params.formats.get(n - 1).copied().unwrap_or(-1),
        };
        match format {
            0 => std::str::from_utf8(value).is_ok_and(|text| same_tenant(value_type, text, tenant)),
            1 => binary_is_tenant(value, value_type, tenant),
            _ => false,
        }
    })
}

fn binary_is_tenant(value: &[u8], value_type: TenantValueType, tenant: &str) -> bool {
    match value_type {
        TenantValueType::Integer => {
            let Ok(expected) = tenant.trim().parse::<i64>() else {
                return false;
            };
            let actual = match value.len() {
                2 => i16::from_be_bytes([value[0], value[1]]) as i64,
                4 => i32::from_be_bytes(value.try_into().expect("4 bytes")) as i64,
                8 => i64::from_be_bytes(value.try_into().expect("8 bytes")),
                _ => return false,
            };
            actual == expected
        }
        TenantValueType::Text => value == tenant.as_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_rest(formats: &[i16], values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            out.extend_from_slice(&f.to_be_bytes());
        }
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend_from_slice(&0i16.to_be_bytes());
        out
    }

    #[test]
    fn text_and_binary_parameters() {
        let int = TenantValueType::Integer;
        let rest = bind_rest(&[], &[Some(b"x"), Some(b"7")]);
        assert!(params_are_tenant(&rest, &[2], int, "7"));
        assert!(!params_are_tenant(&rest, &[2], int, "8"));
        assert!(!params_are_tenant(&rest, &[3], int, "7"));
        let seven = 7i64.to_be_bytes();
        let rest = bind_rest(&[1], &[Some(&seven)]);
        assert!(params_are_tenant(&rest, &[1], int, "7"));
        let rest = bind_rest(&[0, 1], &[None, Some(&7i32.to_be_bytes())]);
        assert!(params_are_tenant(&rest, &[2], int, "7"));
        assert!(!params_are_tenant(&rest, &[1], int, "7"));
        assert!(!params_are_tenant(b"\xff", &[1], int, "7"));
        let rest = bind_rest(&[1], &[Some(b"acme")]);
        assert!(params_are_tenant(
            &rest,
            &[1],
            TenantValueType::Text,
            "acme"
        ));
    }
}
