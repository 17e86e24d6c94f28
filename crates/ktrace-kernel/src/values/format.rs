//! Values as GDB prints them (`print`, `info args`, the arguments of a
//! `bt` line), and as JSON.
//!
//! GDB's defaults are followed: integers in decimal, pointers in hex with
//! the symbol they point to (`0xffffffff82a07a40 <jiffies_lock>`), a
//! `char *` followed by its string, enums by name, char arrays as strings
//! with runs of more than 10 equal characters as `'c' <repeats N times>`,
//! at most 200 elements.

use ktrace_symbols::{TypeRef, TypeShape};
use serde_json::json;

use super::value::{is_char_pointer, Value};
use crate::{Kernel, Target};

/// GDB's `print elements` default.
const PRINT_ELEMENTS: usize = 200;
/// GDB's `print repeats` default: runs longer than this are collapsed.
const REPEAT_THRESHOLD: usize = 10;
/// Nesting printed before `{...}`.
const MAX_DEPTH: usize = 8;

/// How much of an aggregate to show.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Detail {
    /// Everything, as `print` shows it.
    Full,
    /// Scalars only, structs and arrays as `...`, as a `bt` line shows arguments.
    Summary,
}

/// The strings `char *` values point to, by pointer.
type Strings<'a> = dyn FnMut(u64) -> String + 'a;

/// `v` as GDB's `print` (with [`Detail::Full`]) or `bt` shows it.
pub async fn format_value<T: Target>(kernel: &Kernel, target: &mut T, v: &Value, detail: Detail) -> String {
    // Once to learn which strings are shown, then with them read.
    let mut wanted = Vec::new();
    text(
        kernel,
        &mut |p| {
            wanted.push(p);
            String::new()
        },
        v.ty,
        &v.bytes,
        detail,
        0,
    );
    let mut strings = std::collections::HashMap::new();
    for p in wanted {
        if let std::collections::hash_map::Entry::Vacant(e) = strings.entry(p) {
            e.insert(c_string_at(target, p).await);
        }
    }
    text(kernel, &mut |p| strings.get(&p).cloned().unwrap_or_default(), v.ty, &v.bytes, detail, 0)
}

fn text(
    kernel: &Kernel,
    strings: &mut Strings,
    ty: Option<TypeRef>,
    bytes: &[u8],
    detail: Detail,
    depth: usize,
) -> String {
    {
        let vm = kernel.vmlinux();
        let Some(ty) = ty else { return le(bytes).to_string() };
        let shape = match vm.type_shape(ty) {
            Ok(s) => s,
            Err(_) => return format!("<type unknown: {} bytes>", bytes.len()),
        };
        match shape {
            TypeShape::Void => "void".into(),
            TypeShape::Int { boolean: true, .. } => (if le(bytes) != 0 { "true" } else { "false" }).into(),
            TypeShape::Int { signed, char, .. } => {
                let n = integer(bytes, signed);
                match char {
                    true => format!("{n} {}", char_literal(bytes.first().copied().unwrap_or(0))),
                    false => n,
                }
            }
            TypeShape::Float { size: 4 } => format!("{}", f32::from_bits(le(bytes) as u32)),
            TypeShape::Float { .. } => format!("{}", f64::from_bits(le(bytes))),
            TypeShape::Pointer(_) => {
                let p = le(bytes);
                let mut s = pointer(kernel, p);
                if p != 0 && is_char_pointer(vm, ty) {
                    s.push(' ');
                    s.push_str(&strings(p));
                }
                s
            }
            TypeShape::Enum { .. } => {
                let n = le(bytes) as i64;
                let n = sign_extend(n as u64, bytes.len());
                let names = vm.enumerators_of(ty).unwrap_or_default();
                match names.iter().find(|(_, v)| *v == n) {
                    Some((name, _)) => name.clone(),
                    None => n.to_string(),
                }
            }
            TypeShape::Function => format!("{{function}} {}", pointer(kernel, le(bytes))),
            TypeShape::Struct { .. } if detail == Detail::Summary || depth >= MAX_DEPTH => "...".into(),
            TypeShape::Array { .. } if detail == Detail::Summary || depth >= MAX_DEPTH => "...".into(),
            TypeShape::Array { element, count } => {
                let esize = vm.size_of_type(element).unwrap_or(0) as usize;
                let n = match (count, esize) {
                    (_, 0) => 0,
                    (Some(c), _) => (c as usize).min(bytes.len() / esize),
                    (None, _) => 0,
                };
                if matches!(vm.type_shape(element), Ok(TypeShape::Int { char: true, .. })) && esize == 1 {
                    return char_array(&bytes[..n]);
                }
                let mut parts = Vec::new();
                let mut i = 0;
                while i < n.min(PRINT_ELEMENTS) {
                    let this = &bytes[i * esize..(i + 1) * esize];
                    let mut run = 1;
                    while i + run < n && &bytes[(i + run) * esize..(i + run + 1) * esize] == this {
                        run += 1;
                    }
                    let s = text(kernel, strings, Some(element), this, detail, depth + 1);
                    if run > REPEAT_THRESHOLD {
                        parts.push(format!("{s} <repeats {run} times>"));
                        i += run;
                    } else {
                        parts.push(s);
                        i += 1;
                    }
                }
                if n > PRINT_ELEMENTS {
                    parts.push("...".into());
                }
                format!("{{{}}}", parts.join(", "))
            }
            TypeShape::Struct { .. } => {
                let fields = vm.fields(ty).unwrap_or_default();
                let mut parts = Vec::new();
                for f in fields {
                    let Some(fty) = f.ty else { continue };
                    let size = vm.size_of_type(fty).unwrap_or(0) as usize;
                    let start = f.offset as usize;
                    let Some(fb) = member_bytes(bytes, start, size, f.bits) else { continue };
                    let s = text(kernel, strings, Some(fty), &fb, detail, depth + 1);
                    match f.name {
                        Some(name) => parts.push(format!("{name} = {s}")),
                        None => parts.push(s),
                    }
                }
                format!("{{{}}}", parts.join(", "))
            }
        }
    }
}

/// A little-endian integer of up to 8 bytes.
fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

fn sign_extend(v: u64, size: usize) -> i64 {
    let n = size.clamp(1, 8);
    let shift = 64 - 8 * n as u32;
    ((v << shift) as i64) >> shift
}

fn integer(bytes: &[u8], signed: bool) -> String {
    match signed {
        true => sign_extend(le(bytes), bytes.len()).to_string(),
        false if bytes.len() > 8 => format!("0x{}", bytes.iter().rev().map(|b| format!("{b:02x}")).collect::<String>()),
        false => le(bytes).to_string(),
    }
}

/// A member's bytes in its struct's: a bit field from the bytes it spans
/// (which may end before its type's size would), `None` past the end.
fn member_bytes(bytes: &[u8], start: usize, size: usize, bits: Option<(u64, u64)>) -> Option<Vec<u8>> {
    match bits {
        Some((bit, nbits)) => {
            let spanned = (bit + nbits).div_ceil(8) as usize;
            bytes.get(start..start + spanned).map(|b| bitfield(b, bit, nbits))
        }
        None => bytes.get(start..start + size).map(<[u8]>::to_vec),
    }
}

/// The bits `bit..bit + nbits` of `bytes` (from the byte the field starts in).
fn bitfield(bytes: &[u8], bit: u64, nbits: u64) -> Vec<u8> {
    let raw = le(&bytes[..bytes.len().min(8)]);
    let v = (raw >> bit) & if nbits >= 64 { u64::MAX } else { (1u64 << nbits) - 1 };
    v.to_le_bytes()[..(nbits as usize).div_ceil(8).max(1)].to_vec()
}

/// A pointer as GDB shows it: hex, and the symbol it points into.
pub fn pointer(kernel: &Kernel, p: u64) -> String {
    if p == 0 {
        return "0x0".into();
    }
    match kernel.vmlinux().symbolize(kernel.link(p)) {
        Some(s) if s.offset == 0 => format!("0x{p:x} <{}>", s.name),
        Some(s) if s.offset < s.size => format!("0x{p:x} <{}+{}>", s.name, s.offset),
        _ => format!("0x{p:x}"),
    }
}

/// A character as GDB quotes it: `'a'`, `'\n'`, `'\000'`.
fn char_literal(c: u8) -> String {
    format!("'{}'", escaped(c, b'\''))
}

fn escaped(c: u8, quote: u8) -> String {
    match c {
        b'\n' => "\\n".into(),
        b'\t' => "\\t".into(),
        b'\r' => "\\r".into(),
        0x07 => "\\a".into(),
        0x08 => "\\b".into(),
        0x0c => "\\f".into(),
        0x0b => "\\v".into(),
        0x1b => "\\033".into(),
        b'\\' => "\\\\".into(),
        c if c == quote => format!("\\{}", c as char),
        0x20..=0x7e => (c as char).to_string(),
        c => format!("\\{c:03o}"),
    }
}

/// A char array as GDB prints it: one trailing NUL dropped, runs of more
/// than 10 equal characters as `'c' <repeats N times>`, at most 200 characters.
pub fn char_array(bytes: &[u8]) -> String {
    let mut b = bytes;
    let truncated = b.len() > PRINT_ELEMENTS;
    if truncated {
        b = &b[..PRINT_ELEMENTS];
    } else if b.last() == Some(&0) {
        b = &b[..b.len() - 1];
    }
    if b.is_empty() {
        return "\"\"".into();
    }
    let mut parts: Vec<String> = Vec::new();
    let mut open = String::new();
    let mut i = 0;
    while i < b.len() {
        let mut run = 1;
        while i + run < b.len() && b[i + run] == b[i] {
            run += 1;
        }
        if run > REPEAT_THRESHOLD {
            if !open.is_empty() {
                parts.push(format!("\"{open}\""));
                open.clear();
            }
            parts.push(format!("{} <repeats {run} times>", char_literal(b[i])));
            i += run;
        } else {
            open.push_str(&escaped(b[i], b'"'));
            i += 1;
        }
    }
    if !open.is_empty() {
        parts.push(format!("\"{open}\""));
    }
    let mut s = parts.join(", ");
    if truncated {
        s.push_str("...");
    }
    s
}

/// The NUL-terminated string at `p`, quoted as GDB prints it, or
/// `<error: Cannot access memory at address 0x…>`.
async fn c_string_at<T: Target>(target: &mut T, p: u64) -> String {
    let mut out = Vec::new();
    // Read up to the end of each page, so no read crosses into an unmapped one.
    let mut at = p;
    while out.len() < PRINT_ELEMENTS {
        let len = ((4096 - (at % 4096)) as usize).min(PRINT_ELEMENTS - out.len());
        match target.read_memory(at, len).await {
            Ok(b) => {
                if let Some(nul) = b.iter().position(|&c| c == 0) {
                    out.extend_from_slice(&b[..nul]);
                    return format!("\"{}\"", out.iter().map(|&c| escaped(c, b'"')).collect::<String>());
                }
                out.extend_from_slice(&b);
                at += len as u64;
            }
            Err(_) if out.is_empty() => return format!("<error: Cannot access memory at address 0x{p:x}>"),
            Err(_) => break,
        }
    }
    format!("\"{}\"...", out.iter().map(|&c| escaped(c, b'"')).collect::<String>())
}

/// `v` as JSON: integers as numbers, pointers as `"0x…"` strings, enums by
/// name, char arrays as strings, structs as objects, arrays as arrays.
pub fn value_json(kernel: &Kernel, v: &Value) -> serde_json::Value {
    json_of(kernel, v.ty, &v.bytes, 0)
}

fn json_of(kernel: &Kernel, ty: Option<TypeRef>, bytes: &[u8], depth: usize) -> serde_json::Value {
    let vm = kernel.vmlinux();
    let Some(ty) = ty else { return json!(le(bytes)) };
    let Ok(shape) = vm.type_shape(ty) else { return serde_json::Value::Null };
    match shape {
        TypeShape::Int { boolean: true, .. } => json!(le(bytes) != 0),
        TypeShape::Int { signed: true, .. } => json!(sign_extend(le(bytes), bytes.len())),
        TypeShape::Int { .. } => json!(le(bytes)),
        TypeShape::Float { size: 4 } => json!(f32::from_bits(le(bytes) as u32)),
        TypeShape::Float { .. } => json!(f64::from_bits(le(bytes))),
        TypeShape::Pointer(_) | TypeShape::Function => json!(format!("0x{:x}", le(bytes))),
        TypeShape::Enum { .. } => {
            let n = sign_extend(le(bytes), bytes.len());
            match vm.enumerators_of(ty).unwrap_or_default().into_iter().find(|(_, v)| *v == n) {
                Some((name, _)) => json!(name),
                None => json!(n),
            }
        }
        TypeShape::Void => serde_json::Value::Null,
        _ if depth >= MAX_DEPTH => serde_json::Value::Null,
        TypeShape::Array { element, count } => {
            let esize = vm.size_of_type(element).unwrap_or(0) as usize;
            let n = match (count, esize) {
                (Some(c), e) if e > 0 => (c as usize).min(bytes.len() / e),
                _ => 0,
            };
            if esize == 1 && matches!(vm.type_shape(element), Ok(TypeShape::Int { char: true, .. })) {
                let b = &bytes[..n];
                let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
                return json!(String::from_utf8_lossy(&b[..end]));
            }
            (0..n).map(|i| json_of(kernel, Some(element), &bytes[i * esize..(i + 1) * esize], depth + 1)).collect()
        }
        TypeShape::Struct { .. } => {
            let mut map = serde_json::Map::new();
            for f in vm.fields(ty).unwrap_or_default() {
                let Some(fty) = f.ty else { continue };
                let size = vm.size_of_type(fty).unwrap_or(0) as usize;
                let start = f.offset as usize;
                let Some(fb) = member_bytes(bytes, start, size, f.bits) else { continue };
                let v = json_of(kernel, Some(fty), &fb, depth + 1);
                match (f.name, v) {
                    (Some(name), v) => {
                        map.insert(name, v);
                    }
                    // An anonymous struct or union: its members are the parent's.
                    (None, serde_json::Value::Object(inner)) => map.extend(inner),
                    (None, _) => {}
                }
            }
            serde_json::Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_arrays_print_like_gdb() {
        let mut comm = *b"testprog\0\0\0\0\0\0\0\0";
        assert_eq!(char_array(&comm), r#""testprog\000\000\000\000\000\000\000""#);
        comm = *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
        assert_eq!(char_array(&comm), r#""sh", '\000' <repeats 13 times>"#);
        assert_eq!(char_array(b"a\"b\n\0"), r#""a\"b\n""#);
        assert_eq!(char_array(b"\0"), r#""""#);
        assert_eq!(char_array(b"xxxxxxxxxxxxy\0"), r#"'x' <repeats 12 times>, "y""#);
    }

    #[test]
    fn chars_and_integers() {
        assert_eq!(char_literal(b'A'), "'A'");
        assert_eq!(char_literal(0), r"'\000'");
        assert_eq!(char_literal(b'\''), r"'\''");
        assert_eq!(integer(&[0xff, 0xff, 0xff, 0xff], true), "-1");
        assert_eq!(integer(&[0xff, 0xff, 0xff, 0xff], false), "4294967295");
        assert_eq!(integer(&[0x9c, 0xff, 0xff, 0xff], true), "-100");
    }

    #[test]
    fn a_bit_field_may_end_before_its_type() {
        // `struct { unsigned lo:16, hi:16; }`: `hi` at byte 2, its type 4 bytes.
        let b = [0x34, 0x12, 0x78, 0x56];
        assert_eq!(member_bytes(&b, 2, 4, Some((0, 16))), Some(vec![0x78, 0x56]));
        assert_eq!(member_bytes(&b, 2, 4, None), None);
        assert_eq!(member_bytes(&b, 0, 4, None), Some(b.to_vec()));
    }

    #[test]
    fn bitfields() {
        // `u8 flags:5; u8 level:3;` level = 6 in the top bits.
        assert_eq!(bitfield(&[0b1100_0011], 5, 3), vec![6]);
        assert_eq!(bitfield(&[0b1100_0011], 0, 5), vec![3]);
    }
}
