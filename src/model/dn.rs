//! Distinguished names (RFC 4514) as directories compare them: parsed into their parts, so that
//! two spellings of one entry's name are equal and two entries are never confused.
//!
//! [`Dn::parse`] reads `cn=Domain Admins,ou=Groups,dc=example,dc=com` into relative names
//! (RDNs, separated by `,`), each a set of attribute=value pairs (joined by `+`). Attribute
//! types and values compare case-insensitively; spaces around `,`, `=` and `+` do not count;
//! escapes (`\,`, `\2C`, `\ ` …) are undone before comparing, so `cn=Smith\, John` and
//! `CN=smith\2c john` are one name; the pairs of a multi-valued RDN compare in any order. A `#`
//! value (the hex of its BER encoding) equals only the same hex, never a string value. What a
//! schema's matching rules add beyond that (an OID for an attribute name, inner spaces that do
//! not count) is not applied: such spellings compare as different, never as equal.
//!
//! Pure: no I/O. Used by the assignment table (`policy`), whose rows may name a group by DN.

/// A parsed distinguished name, ready to be compared: attribute types lower-cased, values
/// unescaped and lower-cased, the pairs of each RDN sorted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dn {
    rdns: Vec<Vec<(String, Value)>>,
}

/// An attribute value as compared.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Value {
    /// A string value, unescaped and lower-cased.
    Text(String),
    /// A `#` value: the hex of a BER encoding, lower-cased. Never equal to a string value, even
    /// one that encodes the same: directories do not write string values so.
    Ber(String),
}

impl Dn {
    /// Parses `text`, or says in a sentence what is wrong with it.
    pub fn parse(text: &str) -> Result<Dn, String> {
        let bytes = text.as_bytes();
        if text.trim().is_empty() {
            return Err("it is empty".into());
        }
        let mut rdns = Vec::new();
        let mut rdn = Vec::new();
        let mut i = 0;
        loop {
            let (ty, after_type) = attribute_type(text, i)?;
            let (value, after_value) = attribute_value(text, after_type, &ty)?;
            rdn.push((ty.to_ascii_lowercase(), value));
            i = after_value;
            match bytes.get(i) {
                None => break,
                Some(b'+') => i += 1,
                Some(_) => {
                    // A `,` (attribute_value stops at nothing else).
                    rdn.sort();
                    rdns.push(std::mem::take(&mut rdn));
                    i += 1;
                }
            }
        }
        rdn.sort();
        rdns.push(rdn);
        Ok(Dn { rdns })
    }
}

impl std::str::FromStr for Dn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dn::parse(s)
    }
}

/// The attribute type starting at `from` (spaces around it skipped) and where its `=` ends.
fn attribute_type(text: &str, from: usize) -> Result<(String, usize), String> {
    let bytes = text.as_bytes();
    let mut end = from;
    while end < bytes.len() && !matches!(bytes[end], b'=' | b',' | b'+') {
        end += 1;
    }
    let ty = text[from..end].trim();
    if bytes.get(end) != Some(&b'=') {
        return Err(if ty.is_empty() {
            "a part of it is empty (a `,` or `+` at the start, at the end or twice in a row)"
                .to_string()
        } else {
            format!("`{ty}` has no `=`: each part is attribute=value, like cn=Admins")
        });
    }
    if ty.is_empty() {
        return Err("an attribute name is missing before `=`".into());
    }
    if !is_attribute_type(ty) {
        return Err(format!(
            "`{ty}` is not an attribute name (letters, digits and `-`, like cn or ou)"
        ));
    }
    Ok((ty.to_string(), end + 1))
}

/// An attribute name (`cn`, `memberOf`, `x-foo`) or an OID (`2.5.4.3`).
pub fn is_attribute_type(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => chars.all(|c| c.is_ascii_alphanumeric() || c == '-'),
        Some(c) if c.is_ascii_digit() => name
            .split('.')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit())),
        _ => false,
    }
}

/// The value starting at `from` (after `=`), unescaped and lower-cased, without the unescaped
/// spaces around it, and where it ends (at the `,` or `+` after it, or the end of the text).
fn attribute_value(text: &str, from: usize, ty: &str) -> Result<(Value, usize), String> {
    let bytes = text.as_bytes();
    let mut i = from;
    while bytes.get(i) == Some(&b' ') {
        i += 1;
    }
    if bytes.get(i) == Some(&b'#') {
        let start = i + 1;
        let mut end = start;
        while end < bytes.len() && bytes[end].is_ascii_hexdigit() {
            end += 1;
        }
        let hex = &text[start..end];
        let mut after = end;
        while bytes.get(after) == Some(&b' ') {
            after += 1;
        }
        if hex.is_empty()
            || !hex.len().is_multiple_of(2)
            || !matches!(bytes.get(after), None | Some(b',' | b'+'))
        {
            return Err(format!(
                "the value of `{ty}` starts with `#` but is not hex digits in pairs (write \
                 `\\#` for a value that starts with #)"
            ));
        }
        return Ok((Value::Ber(hex.to_ascii_lowercase()), after));
    }
    let mut value = Vec::new();
    // The length of `value` up to its last character that counts (not a trailing unescaped
    // space).
    let mut kept = 0;
    while i < bytes.len() {
        match bytes[i] {
            b',' | b'+' => break,
            b'\\' => {
                let pair = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match (pair, bytes.get(i + 1)) {
                    (Some(b), _) => {
                        value.push(b);
                        i += 3;
                    }
                    (None, Some(&c)) if b" \"#+,;<=>\\".contains(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    _ => {
                        return Err(format!(
                            "the value of `{ty}` has a `\\` that escapes nothing: write `\\` \
                             before one of , + \" \\ < > ; # = or a space, or before two hex \
                             digits"
                        ));
                    }
                }
                kept = value.len();
            }
            c @ (b'"' | b';' | b'<' | b'>' | 0) => {
                let (shown, escaped) = match c {
                    0 => ("NUL".to_string(), "\\00".to_string()),
                    c => ((c as char).to_string(), format!("\\{}", c as char)),
                };
                return Err(format!(
                    "the value of `{ty}` holds a `{shown}` that must be escaped (`{escaped}`)"
                ));
            }
            c => {
                value.push(c);
                if c != b' ' {
                    kept = value.len();
                }
                i += 1;
            }
        }
    }
    value.truncate(kept);
    let value = String::from_utf8(value)
        .map_err(|_| format!("the escapes in the value of `{ty}` are not UTF-8"))?;
    if value.is_empty() {
        return Err(format!("`{ty}` has no value"));
    }
    Ok((Value::Text(value.to_lowercase()), i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(text: &str) -> Dn {
        Dn::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn spellings_of_one_name_are_equal() {
        let plain = dn("cn=Domain Admins,ou=Groups,dc=example,dc=com");
        for same in [
            "CN=domain admins,OU=GROUPS,DC=Example,DC=Com",
            "cn = Domain Admins , ou=Groups ,dc= example,dc=com",
            "  cn=Domain Admins,ou=Groups,dc=example,dc=com  ",
            "cn=Domain\\20Admins,ou=Groups,dc=example,dc=com",
            "cn=\\44omain Admins,ou=Groups,dc=example,dc=com",
        ] {
            assert_eq!(dn(same), plain, "{same}");
        }
        assert_eq!(
            dn("cn=Smith\\, John,dc=x"),
            dn("CN=smith\\2c john,DC=X"),
            "a hex escape and a character escape are one character"
        );
        assert_eq!(
            dn("cn=a+sn=b,dc=x"),
            dn("SN=B + CN=A,dc=x"),
            "pairs in any order"
        );
        assert_eq!(
            dn("cn=caf\\c3\\a9,dc=x"),
            dn("cn=CAFÉ,dc=x"),
            "UTF-8 escapes"
        );
        assert_eq!(
            dn("cn=a\\=b,dc=x"),
            dn("cn=a=b,dc=x"),
            "`=` may stand unescaped in a value"
        );
    }

    #[test]
    fn different_names_are_different() {
        let admins = dn("cn=admins,ou=groups,dc=example,dc=com");
        assert_ne!(dn("cn=admins,ou=helpdesk,dc=example,dc=com"), admins);
        assert_ne!(
            dn("cn=admins,ou=groups,dc=example"),
            admins,
            "a shorter name"
        );
        assert_ne!(
            dn("ou=admins,ou=groups,dc=example,dc=com"),
            admins,
            "another type"
        );
        assert_ne!(
            dn("cn=admins\\,ou=groups,dc=example,dc=com"),
            admins,
            "an escaped comma is part of the value"
        );
        assert_ne!(
            dn("cn=admins\\ ,ou=groups,dc=example,dc=com"),
            admins,
            "an escaped trailing space counts"
        );
        assert_ne!(dn("cn=a+sn=b,dc=x"), dn("cn=a,sn=b,dc=x"), "`+` is not `,`");
    }

    #[test]
    fn what_is_not_a_dn_is_refused_with_the_reason() {
        for (text, says) in [
            ("", "empty"),
            ("cn=admins,,dc=x", "empty"),
            ("cn=admins,", "empty"),
            (",cn=admins", "empty"),
            ("cn=admins,example", "`example` has no `=`"),
            ("=admins", "attribute name is missing"),
            ("c n=admins", "not an attribute name"),
            ("cn=,dc=x", "`cn` has no value"),
            ("cn=a\\qb", "escapes nothing"),
            ("cn=a\\", "escapes nothing"),
            ("cn=a\"b", "must be escaped"),
            ("cn=a;dc=x", "must be escaped"),
            ("cn=#12z", "hex digits in pairs"),
            ("cn=\\ff\\fe", "not UTF-8"),
        ] {
            let err = Dn::parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
        assert_eq!(dn("cn=#04024869,dc=x"), dn("CN=#04024869 , DC=x"));
        assert_ne!(
            dn("cn=#04024869,dc=x"),
            dn("cn=\\#04024869,dc=x"),
            "a BER value is not the string of its hex"
        );
    }
}
