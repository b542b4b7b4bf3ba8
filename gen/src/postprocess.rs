//! What the generator changes in bindgen's output, done on the syntax tree:
//! every `unsafe` block is recognised as one bindgen is known to emit, and
//! proved sound for its record before it gets a `// SAFETY:` comment, and
//! the `Debug` impls of packed records format copies of their fields.
//!
//! A bindgen release that emits anything else (another `unsafe` block, a
//! zero-filled record with a pointer or a `bool` in it) makes the generator
//! fail with the item named, instead of stamping a claim that no longer
//! holds.

use std::collections::{BTreeMap, BTreeSet};

use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{Expr, Fields, Item, Stmt, Type};

/// The comment every recognised zero-fill gets.
pub const ZERO_FILL_SAFETY: &str = "// SAFETY: every field is an integer or an aggregate of \
     integers, for which all-zero bytes are a valid value.";

/// The statement put before each recognised `unsafe` block, which
/// [`comments`] turns into [`ZERO_FILL_SAFETY`] after unparsing (a syntax
/// tree holds no comments).
const MARKER: &str = "__userfault_gen_safety_comment";

/// Applies both rewrites to `file`.
pub fn rewrite(file: &mut syn::File) -> Result<(), String> {
    if file.to_token_stream().to_string().contains(MARKER) {
        return Err(format!("bindgen output already contains {MARKER}"));
    }
    let records = Records::of(file);
    for item in &mut file.items {
        match item {
            Item::Impl(imp) => {
                let self_ty = type_name(&imp.self_ty);
                let trait_name = imp
                    .trait_
                    .as_ref()
                    .and_then(|(_, path, _)| path.segments.last())
                    .map(|s| s.ident.to_string());
                match (trait_name.as_deref(), self_ty) {
                    (Some("Default"), Some(record)) => mark_zero_fill(imp, &record, &records)?,
                    (Some("Debug"), Some(record)) if records.packed.contains(&record) => {
                        copy_fields_in_debug(imp)?;
                        refuse(unsafe_in_impl(imp), &format!("impl Debug for {record}"))?;
                    }
                    _ => refuse(unsafe_in_impl(imp), &describe(imp))?,
                }
            }
            other => refuse(unsafe_in_item(other), "an item")?,
        }
    }
    Ok(())
}

/// Replaces each marker statement line of unparsed text with the comment
/// it stands for, at the same indentation.
pub fn comments(text: &str) -> String {
    let marker_line = format!("{MARKER}!();");
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim() == marker_line {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(indent);
            out.push_str(ZERO_FILL_SAFETY);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The records of the file: their field types, which are packed, and the
/// integer type aliases.
struct Records {
    fields: BTreeMap<String, Vec<Type>>,
    packed: BTreeSet<String>,
    aliases: BTreeMap<String, Type>,
}

impl Records {
    fn of(file: &syn::File) -> Records {
        let mut r = Records {
            fields: BTreeMap::new(),
            packed: BTreeSet::new(),
            aliases: BTreeMap::new(),
        };
        for item in &file.items {
            match item {
                Item::Struct(s) => {
                    let name = s.ident.to_string();
                    if s.attrs.iter().any(|a| {
                        a.path().is_ident("repr")
                            && a.to_token_stream().to_string().contains("packed")
                    }) {
                        r.packed.insert(name.clone());
                    }
                    let types = match &s.fields {
                        Fields::Named(f) => f.named.iter().map(|f| f.ty.clone()).collect(),
                        Fields::Unnamed(f) => f.unnamed.iter().map(|f| f.ty.clone()).collect(),
                        Fields::Unit => Vec::new(),
                    };
                    r.fields.insert(name, types);
                }
                Item::Union(u) => {
                    let types = u.fields.named.iter().map(|f| f.ty.clone()).collect();
                    r.fields.insert(u.ident.to_string(), types);
                }
                Item::Type(t) => {
                    r.aliases.insert(t.ident.to_string(), (*t.ty).clone());
                }
                _ => {}
            }
        }
        r
    }

    /// Why all-zero bytes may not be a valid `ty`, or `None` when they are:
    /// integers, arrays of them, and records (and bindgen's bitfield units)
    /// made of them.
    fn not_zeroable(&self, ty: &Type, seen: &mut Vec<String>) -> Option<String> {
        match ty {
            Type::Array(a) => self.not_zeroable(&a.elem, seen),
            Type::Paren(p) => self.not_zeroable(&p.elem, seen),
            Type::Path(p) if p.qself.is_none() => {
                let last = p.path.segments.last()?;
                let name = last.ident.to_string();
                const INTEGERS: [&str; 12] = [
                    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
                    "i128", "isize",
                ];
                // The C integer types of `core::ffi` / `std::os::raw`.
                const C_INTEGERS: [&str; 11] = [
                    "c_char",
                    "c_schar",
                    "c_uchar",
                    "c_short",
                    "c_ushort",
                    "c_int",
                    "c_uint",
                    "c_long",
                    "c_ulong",
                    "c_longlong",
                    "c_ulonglong",
                ];
                let c_path = p.path.segments.len() > 1
                    && p.path.segments.iter().any(|s| s.ident == "ffi" || s.ident == "raw");
                if INTEGERS.contains(&name.as_str())
                    || (c_path && C_INTEGERS.contains(&name.as_str()))
                {
                    return None;
                }
                if name == "__BindgenBitfieldUnit" || name == "__IncompleteArrayField" {
                    return match &last.arguments {
                        syn::PathArguments::AngleBracketed(args) => {
                            args.args.iter().find_map(|arg| match arg {
                                syn::GenericArgument::Type(t) => self.not_zeroable(t, seen),
                                _ => None,
                            })
                        }
                        _ => Some(format!("{name} without a type argument")),
                    };
                }
                if let Some(target) = self.aliases.get(&name) {
                    return self.not_zeroable(target, seen);
                }
                if let Some(fields) = self.fields.get(&name) {
                    if seen.contains(&name) {
                        return None;
                    }
                    seen.push(name.clone());
                    return fields
                        .iter()
                        .find_map(|f| self.not_zeroable(f, seen))
                        .map(|why| format!("{name}: {why}"));
                }
                Some(format!("type {} is not known to be an integer", quote(ty)))
            }
            other => Some(format!("type {} is not an integer", quote(other))),
        }
    }
}

fn quote(t: &impl ToTokens) -> String {
    t.to_token_stream().to_string()
}

fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) if p.qself.is_none() && p.path.segments.len() == 1 => {
            Some(p.path.segments[0].ident.to_string())
        }
        _ => None,
    }
}

fn describe(imp: &syn::ItemImpl) -> String {
    match &imp.trait_ {
        Some((_, path, _)) => format!("impl {} for {}", quote(path), quote(&*imp.self_ty)),
        None => format!("impl {}", quote(&*imp.self_ty)),
    }
}

/// Fails when `found` names an `unsafe` block (or function or impl).
fn refuse(found: Option<String>, what: &str) -> Result<(), String> {
    match found {
        None => Ok(()),
        Some(block) => Err(format!(
            "bindgen emitted unsafe code the generator does not know, in {what}: {block}"
        )),
    }
}

fn unsafe_in_impl(imp: &syn::ItemImpl) -> Option<String> {
    let mut finder = UnsafeFinder(None);
    finder.visit_item_impl(imp);
    finder.0
}

fn unsafe_in_item(item: &Item) -> Option<String> {
    let mut finder = UnsafeFinder(None);
    finder.visit_item(item);
    finder.0
}

/// The first `unsafe` block, function or impl found.
struct UnsafeFinder(Option<String>);

impl<'ast> Visit<'ast> for UnsafeFinder {
    fn visit_expr_unsafe(&mut self, e: &'ast syn::ExprUnsafe) {
        self.0.get_or_insert_with(|| quote(e));
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if f.sig.unsafety.is_some() {
            self.0.get_or_insert_with(|| format!("unsafe fn {}", f.sig.ident));
        }
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if f.sig.unsafety.is_some() {
            self.0.get_or_insert_with(|| format!("unsafe fn {}", f.sig.ident));
        }
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if i.unsafety.is_some() {
            self.0.get_or_insert_with(|| format!("unsafe {}", describe(i)));
        }
        syn::visit::visit_item_impl(self, i);
    }
}

/// bindgen's zero-filling `Default`:
///
/// ```text
/// fn default() -> Self {
///     let mut s = ::core::mem::MaybeUninit::<Self>::uninit();
///     unsafe {
///         ::core::ptr::write_bytes(s.as_mut_ptr(), 0, 1);
///         s.assume_init()
///     }
/// }
/// ```
///
/// Recognised exactly, and only for a record all-zero bytes are valid for;
/// a marker goes before the `unsafe` block. A `Default` without `unsafe`
/// is left alone.
fn mark_zero_fill(imp: &mut syn::ItemImpl, record: &str, records: &Records) -> Result<(), String> {
    let what = format!("impl Default for {record}");
    if unsafe_in_impl(imp).is_none() {
        return Ok(());
    }
    let [syn::ImplItem::Fn(f)] = imp.items.as_mut_slice() else {
        return Err(format!("{what}: unsafe code outside the known zero-fill"));
    };
    let expected: [&str; 2] = [
        "let mut s = :: core :: mem :: MaybeUninit :: < Self > :: uninit () ;",
        "unsafe { :: core :: ptr :: write_bytes (s . as_mut_ptr () , 0 , 1) ; s . assume_init () }",
    ];
    let got: Vec<String> = f.block.stmts.iter().map(quote).collect();
    if f.sig.ident != "default" || got != expected {
        return Err(format!(
            "{what}: unsafe code that is not bindgen's known zero-fill: {}",
            got.join(" ")
        ));
    }
    if let Some(why) = records.not_zeroable(
        &Type::Path(syn::TypePath {
            qself: None,
            path: syn::Ident::new(record, proc_macro2::Span::call_site()).into(),
        }),
        &mut Vec::new(),
    ) {
        return Err(format!(
            "{what}: zero-fills a record for which all-zero bytes may be invalid ({why})"
        ));
    }
    let marker: Stmt = syn::parse_str(&format!("{MARKER}!();"))
        .map_err(|e| format!("marker statement: {e}"))?;
    f.block.stmts.insert(1, marker);
    Ok(())
}

/// bindgen's `Debug` for a struct holding a union formats `self.field`
/// inside `write!`, which borrows; a packed struct's fields may not be
/// borrowed, so each `self.field` argument becomes a copy, `{ self.field }`.
fn copy_fields_in_debug(imp: &mut syn::ItemImpl) -> Result<(), String> {
    struct Macros(Result<(), String>);
    impl VisitMut for Macros {
        fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
            if self.0.is_err() {
                return;
            }
            let parsed = mac.parse_body_with(Punctuated::<Expr, syn::Token![,]>::parse_terminated);
            match parsed {
                Ok(mut args) => {
                    for arg in args.iter_mut() {
                        CopySelfFields.visit_expr_mut(arg);
                    }
                    mac.tokens = args.to_token_stream();
                }
                Err(e) => {
                    self.0 = Err(format!("a macro in a packed Debug impl: {e}: {}", quote(mac)))
                }
            }
        }
    }
    let mut m = Macros(Ok(()));
    m.visit_item_impl_mut(imp);
    m.0
}

/// `self.field` → `{ self.field }`.
struct CopySelfFields;

impl VisitMut for CopySelfFields {
    fn visit_expr_mut(&mut self, e: &mut Expr) {
        if let Expr::Field(field) = e
            && let Expr::Path(base) = &*field.base
            && base.path.is_ident("self")
        {
            let copy: Expr = syn::parse_quote!({ #field });
            *e = copy;
            return;
        }
        syn::visit_mut::visit_expr_mut(self, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZERO_FILL: &str = "impl Default for R {
        fn default() -> Self {
            let mut s = ::core::mem::MaybeUninit::<Self>::uninit();
            unsafe {
                ::core::ptr::write_bytes(s.as_mut_ptr(), 0, 1);
                s.assume_init()
            }
        }
    }";

    fn run(src: &str) -> Result<String, String> {
        let mut file: syn::File = syn::parse_str(src).expect("test source");
        rewrite(&mut file)?;
        Ok(comments(&prettyplease::unparse(&file)))
    }

    #[test]
    fn zero_fills_of_integer_records_get_their_reason() {
        let src = format!(
            "pub type __u64 = ::std::os::raw::c_ulonglong;
             #[repr(C)] pub struct Inner {{ pub a: [u8; 4], pub b: __u64 }}
             #[repr(C)] pub union R {{ pub x: Inner, pub y: u32 }}
             {ZERO_FILL}"
        );
        let out = run(&src).expect("rewritten");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let at = lines.iter().position(|l| *l == "unsafe {").expect("unsafe block");
        assert_eq!(lines[at - 1], ZERO_FILL_SAFETY);
        assert!(!out.contains(MARKER), "{out}");
    }

    #[test]
    fn zero_fills_that_are_not_sound_are_refused() {
        for field in [
            "pub p: *mut u8",
            "pub b: bool",
            "pub f: Option<fn()>",
            "pub v: ::core::ffi::c_float",
        ] {
            let src = format!("#[repr(C)] pub struct R {{ {field} }} {ZERO_FILL}");
            let e = run(&src).expect_err(field);
            assert!(e.contains("all-zero bytes may be invalid"), "{field}: {e}");
        }
    }

    #[test]
    fn unknown_unsafe_code_is_refused() {
        let e = run("#[repr(C)] pub struct R { pub a: u8 }
             impl R { pub fn get(&self) -> u8 { unsafe { *(&self.a as *const u8) } } }")
        .expect_err("an unknown unsafe block");
        assert!(e.contains("does not know, in impl R"), "{e}");
        let e = run("#[repr(C)] pub struct R { pub a: u8 }
             impl Default for R { fn default() -> Self { unsafe { ::core::mem::zeroed() } } }")
        .expect_err("a different zero-fill");
        assert!(e.contains("not bindgen's known zero-fill"), "{e}");
        let e = run("extern \"C\" { pub fn f(); } pub unsafe fn g() {}").expect_err("unsafe fn");
        assert!(e.contains("unsafe fn g"), "{e}");
    }

    #[test]
    fn packed_debug_formats_copies_of_its_fields() {
        let src = "#[repr(C, packed)] pub struct P { pub a: u8, pub b: u32 }
             impl ::core::fmt::Debug for P {
                 fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                     write!(f, \"P {{ a: {:?}, b: {:?} }}\", self.a, self.b)
                 }
             }
             #[repr(C)] pub struct Q { pub a: u8 }
             impl ::core::fmt::Debug for Q {
                 fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                     write!(f, \"Q {{ a: {:?} }}\", self.a)
                 }
             }";
        let out = run(src).expect("rewritten");
        assert!(out.contains("{ self.a }") && out.contains("{ self.b }"), "{out}");
        let q = &out[out.find("for Q").expect("Q's impl")..];
        assert!(!q.contains("{ self.a }"), "only packed records change: {q}");
    }
}
