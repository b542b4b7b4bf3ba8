//! The table of every generated constant, record and field, written for the
//! integration tests: they compare each entry with C compiled against the
//! system's kernel headers, or with the reference values.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use quote::ToTokens;
use syn::{Fields, Item, Type};

/// One field (possibly nested) of a root record.
struct Field {
    /// Dotted path as C spells it.
    c_path: String,
    /// Dotted path as the Rust binding spells it.
    rust_path: String,
    ty: String,
}

/// bindgen appends `_` to a field named like a Rust keyword (`move`).
fn c_name(rust: &str) -> &str {
    const KEYWORDS: &[&str] = &["move", "type", "ref", "match", "fn", "mod", "use", "loop"];
    match rust.strip_suffix('_') {
        Some(base) if KEYWORDS.contains(&base) => base,
        _ => rust,
    }
}

struct Record {
    name: String,
    union: bool,
    fields: Vec<Field>,
}

/// Everything one generated module contains.
pub struct Table {
    rust_path: String,
    header: String,
    system_header: Option<String>,
    consts: Vec<String>,
    records: Vec<Record>,
}

/// A struct or union as declared: name, kind, and named fields.
struct RecordDef {
    name: String,
    union: bool,
    fields: Vec<(String, Type)>,
}

/// Named fields of each struct or union in the file.
fn record_defs(file: &syn::File) -> Vec<RecordDef> {
    let mut defs = Vec::new();
    for item in &file.items {
        let (name, union, fields) = match item {
            Item::Struct(s) => match &s.fields {
                Fields::Named(f) => (s.ident.to_string(), false, &f.named),
                _ => continue,
            },
            Item::Union(u) => (u.ident.to_string(), true, &u.fields.named),
            _ => continue,
        };
        let fields = fields
            .iter()
            .filter_map(|f| Some((f.ident.as_ref()?.to_string(), f.ty.clone())))
            .collect();
        defs.push(RecordDef {
            name,
            union,
            fields,
        });
    }
    defs
}

fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.get_ident().map(ToString::to_string),
        _ => None,
    }
}

/// The type with every bare identifier qualified by the module path.
fn qualify(ty: &Type, module: &str) -> String {
    match ty {
        Type::Path(p) if p.path.get_ident().is_some() => {
            format!("{module}::{}", p.path.to_token_stream())
        }
        Type::Array(a) => {
            format!(
                "[{}; {}]",
                qualify(&a.elem, module),
                a.len.to_token_stream()
            )
        }
        other => other.to_token_stream().to_string(),
    }
}

/// Walks every root record (one not used as a field of another) and lists
/// its fields depth-first with dotted paths through nested records.
pub fn collect(
    file: &syn::File,
    rust_path: &str,
    header: &str,
    system_header: Option<&str>,
) -> Table {
    let defs = record_defs(file);
    let nested: BTreeSet<String> = defs
        .iter()
        .flat_map(|d| d.fields.iter().filter_map(|(_, ty)| type_name(ty)))
        .collect();
    let mut records = Vec::new();
    for def in defs.iter().filter(|d| !nested.contains(&d.name)) {
        let mut fields = Vec::new();
        walk(&defs, &def.name, ("", ""), rust_path, &mut fields);
        records.push(Record {
            name: def.name.clone(),
            union: def.union,
            fields,
        });
    }
    let consts = file
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Const(c) if c.ident != "_" => Some(c.ident.to_string()),
            _ => None,
        })
        .collect();
    Table {
        rust_path: rust_path.to_string(),
        header: header.to_string(),
        system_header: system_header.map(str::to_string),
        consts,
        records,
    }
}

fn walk(
    defs: &[RecordDef],
    record: &str,
    (c_prefix, rust_prefix): (&str, &str),
    module: &str,
    out: &mut Vec<Field>,
) {
    let Some(def) = defs.iter().find(|d| d.name == record) else {
        return;
    };
    for (name, ty) in &def.fields {
        let c_path = format!("{c_prefix}{}", c_name(name));
        let rust_path = format!("{rust_prefix}{name}");
        out.push(Field {
            c_path: c_path.clone(),
            rust_path: rust_path.clone(),
            ty: qualify(ty, module),
        });
        if let Some(inner) = type_name(ty).filter(|t| defs.iter().any(|d| &d.name == t)) {
            walk(
                defs,
                &inner,
                (&format!("{c_path}."), &format!("{rust_path}.")),
                module,
                out,
            );
        }
    }
}

/// Rust source of the table (types `Module` and `Item` live in the test).
pub fn render(tables: &[Table]) -> String {
    let mut s = String::new();
    s.push_str(
        "//! Every constant, record and field of the sys crates, as the tests see them.\n\n",
    );
    s.push_str("// Constants have the width of their field; the table widens them all.\n");
    s.push_str("#![allow(clippy::unnecessary_cast)]\n\n");
    s.push_str("use super::{Item, Module};\n");
    s.push_str("use core::mem::{align_of, offset_of, size_of};\n\n");
    s.push_str("/// One entry per generated module.\n");
    s.push_str("pub const MODULES: &[Module] = &[\n");
    for t in tables {
        let m = &t.rust_path;
        let system = match &t.system_header {
            Some(h) => format!("Some({h:?})"),
            None => "None".to_string(),
        };
        let _ = writeln!(
            s,
            "Module {{ rust_path: {m:?}, header: \"abi/{}\", system_header: {system}, items: &[",
            t.header
        );
        for c in &t.consts {
            let _ = writeln!(s, "Item::Const {{ name: {c:?}, value: {m}::{c} as u64 }},");
        }
        for r in &t.records {
            let name = &r.name;
            let _ = writeln!(
                s,
                "Item::Record {{ name: {name:?}, union: {}, size: size_of::<{m}::{name}>(), \
                 align: align_of::<{m}::{name}>() }},",
                r.union
            );
            for f in &r.fields {
                let _ = writeln!(
                    s,
                    "Item::Field {{ record: {name:?}, path: {:?}, offset: offset_of!({m}::{name}, {}), \
                     size: size_of::<{}>() }},",
                    f.c_path, f.rust_path, f.ty
                );
            }
        }
        s.push_str("]},\n");
    }
    s.push_str("];\n");
    s
}
