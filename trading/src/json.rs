//! A reader for the flat JSON objects events carry (`{"price":2308.17,
//! "side":"sell",...}`): a replay reads a million of them, and serde_json's
//! general parser costs several times more than this scan.
//!
//! It reads only a subset of JSON, and gives up (`None`) on anything outside
//! it, so that the caller hands the text to serde_json and gets exactly its
//! answer: nested objects and arrays, strings with escapes or control
//! characters, integers longer than 18 digits, exponents longer than 4, duplicate keys the caller cares about, anything malformed. For every
//! text it reads, each value is the one serde_json gives (see the tests):
//!
//! - a string: borrowed from the text;
//! - an integer: [`SqlVal::Int`]; `-0` is `-0.0` as serde_json reads it;
//! - a number with a fraction or an exponent: the nearest `f64`, as
//!   serde_json's `float_roundtrip` reading gives it; computed as an exact
//!   significand (at most 2^53) divided by an exact power of ten (at most
//!   10^22), which IEEE division rounds correctly, or else by the standard
//!   library's parser, which rounds correctly too;
//! - `true`/`false`: 1/0, `null`: NULL (as [`crate::effects`] stores them).

use std::borrow::Cow;

use crate::effects::SqlVal;

/// Reads `text` as one flat JSON object, calling `field(key, value)` for each
/// member in order. `None` when the text is outside the subset this reads,
/// or when `field` returns `false` (the caller then wants serde_json's
/// reading, for instance of a duplicate key).
pub(crate) fn read_flat_object<'a>(
    text: &'a str,
    mut field: impl FnMut(&'a str, SqlVal<'a>) -> bool,
) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return end(b, i + 1);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key, next) = string(text, i + 1)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, next) = value(text, i)?;
        if !field(key, value) {
            return None;
        }
        i = skip_ws(b, next);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return end(b, i + 1),
            _ => return None,
        }
    }
}

/// Only whitespace may follow the object.
fn end(b: &[u8], i: usize) -> Option<()> {
    (skip_ws(b, i) == b.len()).then_some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The string whose content starts at `i` (after the quote) and the index
/// after its closing quote; `None` for escapes and control characters.
fn string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    // One scan: the first quote, unless an escape or a control character
    // comes before it.
    let len = first_special(b.get(i..)?)?;
    if b[i + len] != b'"' {
        return None;
    }
    // Both ends are ASCII quotes, so these are character boundaries.
    Some((text.get(i..i + len)?, i + len + 1))
}

/// The index of the first quote, backslash or control character (below
/// 0x20) in `b`, eight bytes at a time.
fn first_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte that is zero: exact up to the first such
    // byte (a borrow only marks bytes above it), which is all we read.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // Bytes below 0x20 have the high bit set after subtracting 0x20
        // and not before (again exact up to the first one).
        let found = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| at + p)
}

/// The value starting at `i` and the index after it.
fn value(text: &str, i: usize) -> Option<(SqlVal<'_>, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => string(text, i + 1).map(|(s, n)| (SqlVal::Text(Cow::Borrowed(s)), n)),
        b'-' | b'0'..=b'9' => number(b, i),
        b't' => literal(b, i, b"true", SqlVal::Int(1)),
        b'f' => literal(b, i, b"false", SqlVal::Int(0)),
        b'n' => literal(b, i, b"null", SqlVal::Null),
        _ => None,
    }
}

fn literal<'a>(b: &[u8], i: usize, word: &[u8], v: SqlVal<'a>) -> Option<(SqlVal<'a>, usize)> {
    (b.get(i..i + word.len())? == word).then_some((v, i + word.len()))
}

/// Exact powers of ten as `f64` (10^22 is the last one).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Digits of an integer read as one; longer integers are left to serde_json.
const MAX_INT_DIGITS: usize = 18;

/// Exponent digits read; longer exponents are left to serde_json.
const MAX_EXP_DIGITS: usize = 4;

/// The number starting at `i` and the index after it.
fn number(b: &[u8], start: usize) -> Option<(SqlVal<'static>, usize)> {
    let negative = b[start] == b'-';
    let mut i = start + usize::from(negative);
    // The significand of all digits, exact while there are at most 19 of
    // them (10^19 - 1 fits a u64); `None` beyond, where the standard
    // library reads the number (as correctly rounded as the division, so
    // where the line falls changes no value).
    let mut sig = 0u64;
    let mut count = 0usize;
    let mut digits = |i: &mut usize| {
        let from = *i;
        while let Some(&c @ b'0'..=b'9') = b.get(*i) {
            sig = sig.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
            *i += 1;
        }
        count += *i - from;
        *i - from
    };
    let whole = digits(&mut i);
    // One or more digits, and no leading zero before another digit.
    let first = start + usize::from(negative);
    if whole == 0 || (b[first] == b'0' && whole > 1) {
        return None;
    }
    let mut fraction = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        fraction = digits(&mut i);
        if fraction == 0 {
            return None;
        }
    }
    let mut exponent = false;
    if let Some(b'e' | b'E') = b.get(i) {
        exponent = true;
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let from = i;
        while let Some(b'0'..=b'9') = b.get(i) {
            i += 1;
        }
        if i == from || i - from > MAX_EXP_DIGITS {
            return None;
        }
    }
    let sig = (count <= 19).then_some(sig);
    if fraction == 0 && !exponent {
        if whole > MAX_INT_DIGITS {
            return None;
        }
        // At most 18 digits: fits an i64 either way.
        let v = i64::try_from(sig?).ok()?;
        return Some(match (negative, v) {
            (true, 0) => (SqlVal::Real(-0.0), i),
            (true, v) => (SqlVal::Int(-v), i),
            (false, v) => (SqlVal::Int(v), i),
        });
    }
    let f = match sig {
        // Exact significand and power of ten: one correctly rounded division.
        Some(s) if !exponent && s <= 1 << 53 && fraction < POW10.len() => {
            let f = s as f64 / POW10[fraction];
            if negative {
                -f
            } else {
                f
            }
        }
        // The standard library's reading is correctly rounded too.
        _ => std::str::from_utf8(&b[start..i])
            .ok()?
            .parse::<f64>()
            .ok()?,
    };
    // serde_json rejects numbers out of range.
    (!f.is_infinite()).then_some((SqlVal::Real(f), i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::{Deserializer, MapAccess, Visitor};

    /// serde_json's reading of a flat object, as the same (key, value) list,
    /// with values as [`crate::effects`] takes them.
    fn serde_reading(text: &str) -> Result<Vec<(String, SqlVal<'static>)>, String> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, SqlVal<'static>)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, crate::effects::Field<'de>>()? {
                    match v {
                        crate::effects::Field::Present(v) => out.push((k, v.into_owned())),
                        crate::effects::Field::Missing => unreachable!("a present value"),
                    }
                }
                Ok(out)
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let v = (&mut de).deserialize_map(V).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(v)
    }

    fn fast_reading(text: &str) -> Option<Vec<(String, SqlVal<'static>)>> {
        let mut out = Vec::new();
        read_flat_object(text, |k, v| {
            out.push((k.to_string(), v.into_owned()));
            true
        })?;
        Some(out)
    }

    /// Equal values, with floats compared bit for bit (the sign of zero too).
    fn same(a: &[(String, SqlVal<'_>)], b: &[(String, SqlVal<'_>)]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
                ka == kb
                    && match (va, vb) {
                        (SqlVal::Real(x), SqlVal::Real(y)) => x.to_bits() == y.to_bits(),
                        _ => va == vb,
                    }
            })
    }

    fn check(text: &str) -> bool {
        match fast_reading(text) {
            None => false,
            Some(fast) => {
                let slow = serde_reading(text)
                    .unwrap_or_else(|e| panic!("read {text:?} that serde_json rejects: {e}"));
                assert!(same(&fast, &slow), "{text:?}: {fast:?} != {slow:?}");
                true
            }
        }
    }

    #[test]
    fn reads_what_the_simulator_writes() {
        for ev in crate::simulate::random_events(3, 2_000) {
            assert!(check(&ev.event_data), "not read: {}", ev.event_data);
        }
    }

    #[test]
    fn reads_the_subset_exactly_as_serde_json() {
        for text in [
            "{}",
            " { } ",
            r#"{"a":1}"#,
            r#"{ "a" : -1 , "b" :"x y" ,"c":null,"d":true,"e":false }"#,
            r#"{"p":2308.17,"q":0.0001,"r":-0.5,"s":0,"t":-0,"u":-0.0}"#,
            r#"{"big":999999999999999999,"neg":-999999999999999999}"#,
            r#"{"f":9007199254740.992,"g":0.1234567890123456}"#,
            r#"{"a":9007199254740993.0,"b":1.0000000000000000000001}"#,
            r#"{"a":0.12345678901234567890123,"b":2.4539999999999984}"#,
            r#"{"a":1e5,"b":1.5E-3,"c":-2e+2,"d":1e-05,"e":0e0,"f":-0e-1}"#,
            r#"{"a":1e-400,"b":-1e-400,"c":4.9e-324,"d":1.7976931348623157e308}"#,
            "{\"é\":\"ü\",\n\t\"k\":\r\"v\"}",
        ] {
            assert!(check(text), "not read: {text}");
        }
    }

    #[test]
    fn gives_up_on_everything_outside_the_subset() {
        for text in [
            "",
            "[]",
            "null",
            "{",
            r#"{"a":1"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":1} x"#,
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":"\"q\""}"#,
            r#"{"a\u0062":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1e12345}"#,
            r#"{"a":1e}"#,
            r#"{"a":1e+}"#,
            r#"{"a":1e400}"#,
            r#"{"a":-1e400}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":1234567890123456789}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
        ] {
            assert!(fast_reading(text).is_none(), "read: {text}");
        }
    }

    #[test]
    fn the_word_scan_finds_the_first_special_byte() {
        let scan = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
        let mut texts: Vec<Vec<u8>> = Vec::new();
        for len in 0..20 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    for fill in [
                        b'a',
                        0x20,
                        0x21,
                        0x7f,
                        0x80,
                        0xc3,
                        0xff,
                        b'"' + 1,
                        b'\\' - 1,
                    ] {
                        let mut t = vec![fill; len];
                        if at < len {
                            t[at] = special;
                        }
                        // A second special byte after the first one.
                        if at + 1 < len {
                            t[at + 1] = b'"';
                        }
                        texts.push(t);
                    }
                }
            }
        }
        texts.push("é\"x".as_bytes().to_vec());
        texts.push("0123456789abcdéf\"".as_bytes().to_vec());
        for t in &texts {
            assert_eq!(first_special(t), scan(t), "{t:?}");
        }
    }

    #[test]
    fn a_refused_field_gives_up() {
        assert!(read_flat_object(r#"{"a":1,"b":2}"#, |k, _| k != "b").is_none());
    }

    fn number_text() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "(0|[1-9][0-9]{0,19})",
            proptest::option::of("[0-9]{1,24}"),
            proptest::option::of("[eE][+-]?[0-9]{1,3}"),
        )
            .prop_map(|(neg, whole, frac, exp)| {
                let mut s = String::new();
                if neg {
                    s.push('-');
                }
                s.push_str(&whole);
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                if let Some(e) = exp {
                    s.push_str(&e);
                }
                s
            })
    }

    fn value_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => number_text(),
            2 => any::<f64>().prop_map(|f| f.to_string()),
            2 => any::<f64>().prop_map(|f| format!("{f:e}")),
            3 => "[a-zA-Z0-9 _/:.\\-é\\\\\"\t]{0,12}".prop_map(|s| format!("{:?}", s)),
            1 => "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
            1 => Just("null".to_string()),
            1 => Just("true".to_string()),
            1 => Just("false".to_string()),
            1 => Just("{\"n\":[1,2]}".to_string()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Whatever is read is read as serde_json reads it.
        #[test]
        fn every_reading_is_serde_jsons(
            members in proptest::collection::vec(("[a-z_]{1,6}", value_text(), "[ \n]{0,1}"), 0..8),
        ) {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v, ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
                .collect();
            let text = format!("{{{}}}", body.join(","));
            check(&text);
        }

        /// Numbers in the forms JSON writers use are read, exactly.
        #[test]
        fn numbers_are_read_exactly(
            neg in any::<bool>(), whole in 0u64..1_000_000_000_000,
            frac in proptest::option::of("[0-9]{1,20}"), exp in proptest::option::of(-330i32..330),
        ) {
            let sign = if neg { "-" } else { "" };
            let mut text = format!("{{\"v\":{sign}{whole}");
            if let Some(f) = frac {
                text.push('.');
                text.push_str(&f);
            }
            if let Some(e) = exp {
                text.push_str(&format!("e{e}"));
            }
            text.push('}');
            // Only numbers out of range, which serde_json rejects, are not read.
            prop_assert!(check(&text) || serde_reading(&text).is_err(), "not read: {}", text);
        }
    }
}
