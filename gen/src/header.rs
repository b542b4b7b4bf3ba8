//! What the generator reads from an `abi/` header besides bindgen's view:
//! the comment that documents each `#define`, the C text of each, and the
//! ioctl request numbers (function-like macros bindgen cannot evaluate).

use std::collections::BTreeMap;

use proc_macro2::Span;
use syn::{Attribute, Fields, Item, parse_quote};

/// One `#define` of the header.
pub struct Define {
    /// The replacement text, whitespace folded.
    pub body: String,
    /// The comment above the define, or above the group it belongs to.
    pub doc: Option<String>,
}

/// One ioctl request number: `#define NAME _IOxx(ty, nr[, struct S])`.
pub struct Ioctl {
    pub name: String,
    /// `io`, `ior`, `iow` or `iowr`: the const fn in the `ioctl` module.
    pub encoder: &'static str,
    pub ty: String,
    pub nr: String,
    pub arg: Option<String>,
}

/// The parsed header.
pub struct Header {
    pub defines: BTreeMap<String, Define>,
    pub ioctls: Vec<Ioctl>,
}

/// Reads `#define`s and their comments. A comment documents the defines
/// that follow it up to the next blank line or other declaration.
pub fn parse(source: &str) -> Header {
    let mut defines = BTreeMap::new();
    let mut ioctls = Vec::new();
    let mut pending: Option<String> = None;
    let mut lines = source.lines().peekable();
    while let Some(raw) = lines.next() {
        let line = raw.trim();
        if line.is_empty() {
            pending = None;
        } else if line.starts_with("/*") {
            let mut text = String::from(line);
            while !text.contains("*/") {
                match lines.next() {
                    Some(next) => {
                        text.push('\n');
                        text.push_str(next.trim());
                    }
                    None => break,
                }
            }
            pending = Some(clean_comment(&text));
        } else if let Some(rest) = line.strip_prefix("#define ") {
            let mut text = rest.to_string();
            while text.ends_with('\\') {
                text.pop();
                match lines.next() {
                    Some(next) => {
                        text.push(' ');
                        text.push_str(next.trim());
                    }
                    None => break,
                }
            }
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let (name, body) = match text.split_once(' ') {
                Some((n, b)) => (n.to_string(), b.to_string()),
                None => (text.clone(), String::new()),
            };
            if name.ends_with("_H") && body.is_empty() {
                continue; // include guard
            }
            if let Some(ioctl) = parse_ioctl(&name, &body) {
                ioctls.push(ioctl);
            }
            defines.insert(
                name,
                Define {
                    body,
                    doc: pending.clone(),
                },
            );
        } else if !line.starts_with('#') {
            pending = None;
        }
    }
    Header { defines, ioctls }
}

/// A C comment as one line of rustdoc: markers removed, lines joined, and
/// brackets escaped so `pad2[14]` is not read as an intra-doc link.
fn clean_comment(text: &str) -> String {
    let body = text.trim().trim_start_matches("/*").trim_end_matches("*/");
    body.lines()
        .map(|l| l.trim().trim_start_matches('*').trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .replace('[', "\\[")
        .replace(']', "\\]")
}

/// Rewrites the doc comments bindgen copied from the header into the same
/// one-line form as [`clean_comment`].
fn normalize_docs(attrs: &mut Vec<Attribute>) {
    let mut text = String::new();
    attrs.retain(|a| {
        if !a.path().is_ident("doc") {
            return true;
        }
        if let syn::Meta::NameValue(nv) = &a.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = &nv.value
        {
            text.push_str(&s.value());
            text.push('\n');
        }
        false
    });
    let cleaned = clean_comment(&text);
    if !cleaned.is_empty() {
        attrs.insert(0, doc_attr(&cleaned));
    }
}

fn parse_ioctl(name: &str, body: &str) -> Option<Ioctl> {
    let (encoder, args) = [
        ("_IOWR(", "iowr"),
        ("_IOR(", "ior"),
        ("_IOW(", "iow"),
        ("_IO(", "io"),
    ]
    .iter()
    .find_map(|(prefix, enc)| body.strip_prefix(prefix).map(|rest| (*enc, rest)))?;
    let args = args.strip_suffix(')')?;
    let parts: Vec<&str> = args.split(',').map(str::trim).collect();
    let (ty, nr, arg) = match (encoder, parts.as_slice()) {
        ("io", [ty, nr]) => (ty, nr, None),
        (_, [ty, nr, arg]) if encoder != "io" => (
            ty,
            nr,
            Some(arg.strip_prefix("struct ")?.trim().to_string()),
        ),
        _ => return None,
    };
    Some(Ioctl {
        name: name.to_string(),
        encoder,
        ty: ty.to_string(),
        nr: nr.to_string(),
        arg,
    })
}

fn doc_attr(text: &str) -> Attribute {
    let text = format!(" {text}");
    parse_quote!(#[doc = #text])
}

fn has_doc(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident("doc"))
}

fn push_docs(attrs: &mut Vec<Attribute>, paragraphs: &[String]) {
    for (i, p) in paragraphs.iter().enumerate() {
        if i > 0 {
            attrs.push(doc_attr(""));
        }
        attrs.push(doc_attr(p));
    }
}

/// Gives every generated item a doc comment: the header's own comment where
/// it has one, and the C declaration it comes from.
pub fn document(file: &mut syn::File, header: &Header, source: &str) {
    for item in &mut file.items {
        match item {
            Item::Const(c) if c.ident != "_" => {
                let name = c.ident.to_string();
                let mut paragraphs = Vec::new();
                if let Some(define) = header.defines.get(&name) {
                    if let Some(doc) = &define.doc {
                        paragraphs.push(doc.clone());
                    }
                    paragraphs.push(format!("C: `#define {name} {}`", define.body));
                } else {
                    paragraphs.push(format!("C: `{name}` from `abi/{source}`."));
                }
                if let Some(define) = header.defines.get(&name) {
                    as_hex_if_bits(&mut c.expr, &define.body);
                }
                c.attrs.retain(|a| !a.path().is_ident("doc"));
                push_docs(&mut c.attrs, &paragraphs);
            }
            Item::Type(t) if !has_doc(&t.attrs) => {
                let name = t.ident.to_string();
                push_docs(&mut t.attrs, &[format!("C integer type `{name}`.")]);
            }
            Item::Struct(s) => {
                let name = s.ident.to_string();
                normalize_docs(&mut s.attrs);
                if !has_doc(&s.attrs) {
                    push_docs(&mut s.attrs, &[format!("C `struct {name}`.")]);
                }
                if let Fields::Named(fields) = &mut s.fields {
                    for f in &mut fields.named {
                        normalize_docs(&mut f.attrs);
                        if !has_doc(&f.attrs) {
                            let field = f
                                .ident
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default();
                            push_docs(&mut f.attrs, &[format!("`{name}.{field}`.")]);
                        }
                    }
                }
            }
            Item::Union(u) => {
                let name = u.ident.to_string();
                normalize_docs(&mut u.attrs);
                if !has_doc(&u.attrs) {
                    push_docs(&mut u.attrs, &[format!("C `union {name}`.")]);
                }
                for f in &mut u.fields.named {
                    normalize_docs(&mut f.attrs);
                    if !has_doc(&f.attrs) {
                        let field = f
                            .ident
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        push_docs(&mut f.attrs, &[format!("`{name}.{field}`.")]);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Bit masks and flags read better in hex: rewrite the literal bindgen
/// evaluated when the C text is a shift, an or, or already hex.
fn as_hex_if_bits(expr: &mut syn::Expr, body: &str) {
    if !(body.contains("<<") || body.contains('|') || body.contains("0x")) {
        return;
    }
    if let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(lit),
        ..
    }) = expr
        && let Ok(value) = lit.base10_parse::<u64>()
    {
        *lit = syn::LitInt::new(&format!("{value:#x}"), lit.span());
    }
}

/// The ioctl request numbers as `u32` constants computed by the `ioctl`
/// module's const fns from the type, number and argument size.
pub fn ioctl_items(header: &Header, ioctl_path: &str) -> Result<Vec<Item>, String> {
    let module: syn::Path = syn::parse_str(ioctl_path).map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    for ioctl in &header.ioctls {
        let name = syn::Ident::new(&ioctl.name, Span::call_site());
        let encoder = syn::Ident::new(ioctl.encoder, Span::call_site());
        let ty: syn::Expr = syn::parse_str(&ioctl.ty).map_err(|e| e.to_string())?;
        let nr: syn::Expr = syn::parse_str(&ioctl.nr).map_err(|e| e.to_string())?;
        let value: syn::Expr = match &ioctl.arg {
            Some(arg) => {
                let arg = syn::Ident::new(arg, Span::call_site());
                parse_quote!(#module::#encoder(#ty, #nr, ::core::mem::size_of::<#arg>()))
            }
            None => parse_quote!(#module::#encoder(#ty, #nr)),
        };
        let mut item: syn::ItemConst = parse_quote!(pub const #name: u32 = #value;);
        let define = &header.defines[&ioctl.name];
        let mut paragraphs = Vec::new();
        if let Some(doc) = &define.doc {
            paragraphs.push(doc.clone());
        }
        paragraphs.push(format!("C: `#define {} {}`", ioctl.name, define.body));
        push_docs(&mut item.attrs, &paragraphs);
        items.push(Item::Const(item));
    }
    Ok(items)
}
