//! iSCSI names (RFC 7143 section 4.2.7): the check both the ISU's and the
//! head's configs apply to every name they are given.

/// Checks an iSCSI name (RFC 7143 section 4.2.7): `iqn.YYYY-MM.reversed.domain[:anything]`,
/// `eui.` + 16 hex digits or `naa.` + 16 or 32 hex digits, at most 223 bytes, already
/// in the lower-case normalized form.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    if name.len() > 223 {
        return Err(format!("{name:?} is longer than 223 bytes"));
    }
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = name.strip_prefix("eui.") {
        return if rest.len() == 16 && hex(rest) {
            Ok(())
        } else {
            Err(format!("{name:?}: an eui. name has exactly 16 hex digits"))
        };
    }
    if let Some(rest) = name.strip_prefix("naa.") {
        return if (rest.len() == 16 || rest.len() == 32) && hex(rest) {
            Ok(())
        } else {
            Err(format!("{name:?}: a naa. name has 16 or 32 hex digits"))
        };
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Err(format!(
            "{name:?} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id], eui. or naa.)"
        ));
    };
    let b = rest.as_bytes();
    let date_ok = b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&((b[5] - b'0') * 10 + (b[6] - b'0')))
        && b[7] == b'.';
    if !date_ok {
        return Err(format!(
            "{name:?}: after \"iqn.\" comes the date YYYY-MM and a '.', e.g. iqn.2026-01.com.example:isu1"
        ));
    }
    let domain = rest[8..].split(':').next().unwrap_or("");
    if domain.is_empty() {
        return Err(format!("{name:?}: the reversed domain name is missing"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':')))
    {
        return Err(format!(
            "{name:?}: character {c:?} is not allowed (use lower-case letters, digits, '.', '-', ':')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_iscsi_name;

    #[test]
    fn iscsi_names() {
        assert!(check_iscsi_name("iqn.2026-01.com.example:isu1").is_ok());
        assert!(check_iscsi_name("eui.0123456789abcdef").is_ok());
        assert!(check_iscsi_name("naa.0123456789abcdef").is_ok());
        assert!(check_iscsi_name("iqn.2026-13.com.x").is_err());
        assert!(check_iscsi_name("iqn.2026-01.").is_err());
        assert!(check_iscsi_name("iqn.2026-01.com.Example").is_err());
        assert!(check_iscsi_name("eui.12").is_err());
    }
}
