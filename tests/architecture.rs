//! The layering of the crate, checked against the source: ARCHITECTURE.md's layer table (the rows
//! between `<!-- layers -->` and `<!-- /layers -->`, `| rank | module | what it holds |`) must list
//! exactly the modules that src/lib.rs declares, and every file of a module may refer only to
//! modules of a strictly lower rank (`crate::x` paths anywhere in code, grouped imports
//! `use crate::{a, b::c}`, `$crate::x`, and `super::` chains that climb to the crate root;
//! comments, doc comments and string literals do not count). Test code inside a module counts
//! too: a dependency that exists only under `#[cfg(test)]` is still a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate's root folder.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Lexing: comments and literals blanked out, then a few tokens.
// ---------------------------------------------------------------------------------------------

/// `src` with every comment (line, block, nested block, doc), string literal (plain, byte, C,
/// raw) and char literal replaced by spaces; line breaks stay, so line numbers are unchanged.
fn strip_comments_and_literals(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    // Blanks c[from..to] into `out`, keeping line breaks.
    let blank = |out: &mut String, from: usize, to: usize| {
        for &ch in &c[from..to.min(c.len())] {
            out.push(if ch == '\n' { '\n' } else { ' ' });
        }
    };
    let mut i = 0;
    while i < c.len() {
        let at = |k: usize| c.get(k).copied().unwrap_or('\0');
        if c[i] == '/' && at(i + 1) == '/' {
            let mut j = i;
            while j < c.len() && c[j] != '\n' {
                j += 1;
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == '/' && at(i + 1) == '*' {
            let (mut j, mut depth) = (i + 2, 1);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c[i] == 'r'
            && (i == 0 || !ident(c[i - 1]) || (matches!(c[i - 1], 'b' | 'c') && (i < 2 || !ident(c[i - 2]))))
        {
            // A raw string r"..." / r#"..."# (also br, cr), unless `r` ends an identifier.
            let mut j = i + 1;
            while at(j) == '#' {
                j += 1;
            }
            if at(j) != '"' {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let mut k = j + 1;
            while k < c.len() && !(c[k] == '"' && (1..=hashes).all(|h| at(k + h) == '#')) {
                k += 1;
            }
            blank(&mut out, i, k + 1 + hashes);
            i = k + 1 + hashes;
        } else if c[i] == '\'' {
            if at(i + 1) == '\\' {
                // An escaped char literal: '\n', '\'', '\u{1F600}'.
                let mut j = i + 3;
                while j < c.len() && c[j] != '\'' && c[j] != '\n' {
                    j += 1;
                }
                blank(&mut out, i, j + 1);
                i = j + 1;
            } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                // A lifetime or a loop label.
                out.push('\'');
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`.
    PathSep,
    Punct(char),
}

/// The tokens of code already stripped of comments and literals, each with its 1-based line.
fn tokens(code: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = code.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            toks.push((Tok::Ident(c[start..i].iter().collect()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            toks.push((Tok::PathSep, line));
            i += 2;
        } else {
            toks.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    toks
}

// ---------------------------------------------------------------------------------------------
// The scanner.
// ---------------------------------------------------------------------------------------------

/// One reference to a top-level item of the crate: `crate::module` (or `*`).
#[derive(Clone, Debug, PartialEq)]
struct Reference {
    line: usize,
    module: String,
}

/// Every reference to a top-level item of the crate in `source`, a file whose module sits
/// `depth` levels below the crate root (1 for `src/x.rs` and `src/x/mod.rs`, 2 for `src/x/y.rs`).
/// Sees `crate::x` and `$crate::x` anywhere in code, each item of a grouped import
/// `crate::{a::b, c}`, and `super::...::x` when the `super`s climb exactly to the crate root
/// (inline `mod name { ... }` blocks count as one level each).
fn crate_references(source: &str, depth: usize) -> Vec<Reference> {
    let toks = tokens(&strip_comments_and_literals(source));
    let ident = |k: usize| match toks.get(k) {
        Some((Tok::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let is = |k: usize, t: &Tok| toks.get(k).map(|(x, _)| x) == Some(t);
    let mut refs = Vec::new();
    let mut braces = 0usize;
    // Brace depth inside each open inline `mod name { ... }`.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => braces += 1,
            Tok::Punct('}') => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            _ => {}
        }
        if ident(i) == Some("mod") && ident(i + 1).is_some() && is(i + 2, &Tok::Punct('{')) {
            inline_mods.push(braces + 1);
        }
        let path_start = i == 0 || !is(i - 1, &Tok::PathSep);
        // Where the path continues after reaching the crate root (the token after `::`).
        let mut after_root = None;
        if path_start && ident(i) == Some("crate") && is(i + 1, &Tok::PathSep) {
            after_root = Some(i + 2);
        } else if path_start && ident(i) == Some("super") {
            let (mut j, mut climbs) = (i, 0);
            while ident(j) == Some("super") && is(j + 1, &Tok::PathSep) {
                climbs += 1;
                j += 2;
            }
            if climbs > 0 && climbs == depth + inline_mods.len() {
                after_root = Some(j);
            }
        }
        if let Some(j) = after_root {
            match toks.get(j) {
                Some((Tok::Ident(name), line)) if name != "self" && name != "super" => {
                    refs.push(Reference { line: *line, module: name.clone() })
                }
                Some((Tok::Punct('*'), line)) => refs.push(Reference { line: *line, module: "*".into() }),
                Some((Tok::Punct('{'), _)) => refs.extend(group_items(&toks, j)),
                _ => {}
            }
        }
        i += 1;
    }
    refs
}

/// The first segment of every item of the group `{ ... }` opening at `toks[open]`.
fn group_items(toks: &[(Tok, usize)], open: usize) -> Vec<Reference> {
    let mut refs = Vec::new();
    let (mut depth, mut item_start) = (0usize, true);
    for (tok, line) in &toks[open..] {
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Tok::Punct(',') if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && item_start {
            match tok {
                Tok::Ident(name) if name != "self" => refs.push(Reference { line: *line, module: name.clone() }),
                Tok::Punct('*') => refs.push(Reference { line: *line, module: "*".into() }),
                _ => {}
            }
        }
        item_start = false;
    }
    refs
}

// ---------------------------------------------------------------------------------------------
// The layer table and the modules of src/.
// ---------------------------------------------------------------------------------------------

/// The layer table of ARCHITECTURE.md: module -> rank.
fn layer_table(doc: &str) -> Result<BTreeMap<String, usize>, Vec<String>> {
    let lines: Vec<&str> = doc.lines().collect();
    let open = lines.iter().position(|l| l.trim() == "<!-- layers -->");
    let close = lines.iter().position(|l| l.trim() == "<!-- /layers -->");
    let (open, close) = match (open, close) {
        (Some(o), Some(c)) if o < c => (o, c),
        _ => return Err(vec!["ARCHITECTURE.md: no `<!-- layers -->` ... `<!-- /layers -->` block".into()]),
    };
    let mut errors = Vec::new();
    let mut table = BTreeMap::new();
    let mut rows = 0;
    for (n, line) in lines.iter().enumerate().take(close).skip(open + 1) {
        let place = format!("ARCHITECTURE.md:{}", n + 1);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.starts_with('|') {
            errors.push(format!("{place}: not a table row inside the layer block: {line}"));
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        rows += 1;
        if rows == 1 {
            if cells.len() < 3 || !cells[0].eq_ignore_ascii_case("rank") || !cells[1].eq_ignore_ascii_case("module") {
                errors.push(format!("{place}: the header must be `| rank | module | what it holds |`"));
            }
            continue;
        }
        if rows == 2 {
            if !cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| matches!(ch, '-' | ':'))) {
                errors.push(format!("{place}: the second row must be the `|---|---|---|` separator"));
            }
            continue;
        }
        if cells.len() < 3 {
            errors.push(format!("{place}: a row needs three cells: rank | module | what it holds"));
            continue;
        }
        let Ok(rank) = cells[0].parse::<usize>() else {
            errors.push(format!("{place}: rank `{}` is not a number", cells[0]));
            continue;
        };
        let module = cells[1].trim_matches('`');
        if module.is_empty() || !module.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            errors.push(format!("{place}: `{}` is not a module name", cells[1]));
            continue;
        }
        if cells[2..].iter().all(|c| c.is_empty()) {
            errors.push(format!("{place}: module `{module}` needs a description"));
        }
        if table.insert(module.to_string(), rank).is_some() {
            errors.push(format!("{place}: module `{module}` is listed twice"));
        }
    }
    if table.is_empty() && errors.is_empty() {
        errors.push("ARCHITECTURE.md: the layer table has no rows".into());
    }
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}

/// The layer table of the repository's ARCHITECTURE.md; panics listing what is wrong with it.
fn layers() -> BTreeMap<String, usize> {
    layer_table(&read("ARCHITECTURE.md")).unwrap_or_else(|errors| panic!("\n{}\n", errors.join("\n")))
}

/// The top-level modules that `source` (src/lib.rs) declares: `mod x;`, `pub mod x;`,
/// `pub(crate) mod x { ... }`, with their lines.
fn declared_modules(source: &str) -> Vec<(String, usize)> {
    let toks = tokens(&strip_comments_and_literals(source));
    let mut mods = Vec::new();
    let mut braces = 0usize;
    for (i, (tok, _)) in toks.iter().enumerate() {
        match tok {
            Tok::Punct('{') => braces += 1,
            Tok::Punct('}') => braces = braces.saturating_sub(1),
            Tok::Ident(kw) if kw == "mod" && braces == 0 => {
                if let (Some((Tok::Ident(name), line)), Some((Tok::Punct(';' | '{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    mods.push((name.clone(), *line));
                }
            }
            _ => {}
        }
    }
    mods
}

/// A source file of the library: its path relative to the crate root, the top-level module it
/// belongs to and its depth below the crate root.
struct SourceFile {
    rel: String,
    module: String,
    depth: usize,
}

/// Every .rs file under src/ except the crate roots (src/lib.rs, src/main.rs, src/bin/).
fn source_files() -> Vec<SourceFile> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = root().join("src");
    let mut paths = Vec::new();
    walk(&src, &mut paths);
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let parts: Vec<String> =
            path.strip_prefix(&src).expect("under src").iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts == ["lib.rs"] || parts == ["main.rs"] || parts[0] == "bin" {
            continue;
        }
        let module = parts[0].trim_end_matches(".rs").to_string();
        let depth = parts.len() - usize::from(parts.len() > 1 && parts[parts.len() - 1] == "mod.rs");
        files.push(SourceFile { rel: format!("src/{}", parts.join("/")), module, depth });
    }
    files
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn layer_table_lists_exactly_the_modules_of_lib_rs() {
    let table = layers();
    let declared = declared_modules(&read("src/lib.rs"));
    let declared_names: BTreeSet<&str> = declared.iter().map(|(m, _)| m.as_str()).collect();
    let mut errors = Vec::new();
    for (module, line) in &declared {
        if !table.contains_key(module) {
            errors.push(format!("src/lib.rs:{line}: module `{module}` is not in ARCHITECTURE.md's layer table"));
        }
    }
    for module in table.keys() {
        if !declared_names.contains(module.as_str()) {
            errors.push(format!("ARCHITECTURE.md: layer table lists `{module}`, which src/lib.rs does not declare"));
        }
    }
    for file in source_files() {
        if !declared_names.contains(file.module.as_str()) {
            errors.push(format!("{}: belongs to no module declared in src/lib.rs", file.rel));
        }
    }
    assert!(errors.is_empty(), "\nthe layer table and the source disagree:\n{}\n", errors.join("\n"));
}

/// The references of `file` (its text `source`) that break the layering of `table`, one line
/// each: `src/path.rs:LINE: module A (rank x) imports B (rank y)`.
fn layering_violations(file: &SourceFile, source: &str, table: &BTreeMap<String, usize>) -> Vec<String> {
    let Some(&rank) = table.get(&file.module) else {
        return Vec::new(); // A module without a rank: reported by the lib.rs test.
    };
    let a = &file.module;
    let mut seen = BTreeSet::new();
    let mut violations = Vec::new();
    for r in crate_references(source, file.depth) {
        if r.module == file.module || !seen.insert((r.line, r.module.clone())) {
            continue;
        }
        let place = format!("{}:{}", file.rel, r.line);
        match table.get(&r.module) {
            Some(&other) if other < rank => {}
            Some(&other) => {
                violations.push(format!("{place}: module {a} (rank {rank}) imports {} (rank {other})", r.module))
            }
            None if r.module == "*" => {
                violations.push(format!("{place}: module {a} (rank {rank}) imports crate::* (every module)"))
            }
            None => violations.push(format!(
                "{place}: module {a} (rank {rank}) imports crate::{}, which is not a module of the layer table \
                 (name the module that defines it)",
                r.module
            )),
        }
    }
    violations
}

#[test]
fn every_module_refers_only_to_lower_layers() {
    let table = layers();
    let violations: Vec<String> =
        source_files().iter().flat_map(|file| layering_violations(file, &read(&file.rel), &table)).collect();
    assert!(
        violations.is_empty(),
        "\n{} references break the layering of ARCHITECTURE.md (a module may refer only to modules of a \
         strictly lower rank):\n{}\n",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn scanner_sees_paths_in_code_only() {
    let found = |src: &str, depth: usize| -> Vec<(usize, String)> {
        crate_references(src, depth).into_iter().map(|r| (r.line, r.module)).collect()
    };
    let refs =
        |pairs: &[(usize, &str)]| -> Vec<(usize, String)> { pairs.iter().map(|&(l, m)| (l, m.to_string())).collect() };
    // A plain (upward) import, and a path in code.
    assert_eq!(
        found("use crate::cli::args::Args;\nfn f() { crate::apps::run(); }\n", 1),
        refs(&[(1, "cli"), (2, "apps")])
    );
    // Grouped imports, nested and over several lines: the first segment of each item.
    let grouped =
        "use crate::{\n    data::{batch::Batch, labels},\n    model,\n    train::trainer::{train, TrainTask},\n};\n";
    assert_eq!(found(grouped, 1), refs(&[(2, "data"), (3, "model"), (4, "train")]));
    assert_eq!(found("use crate::{self, rng::Rng as R, *};", 1), refs(&[(1, "rng"), (1, "*")]));
    // Commented out, in doc comments, in strings: not references.
    let quiet = "// use crate::cli;\n/* crate::apps::run() /* nested crate::job */ */\n/// See [`crate::cli`].\n\
                 //! crate::cli::run\nconst S: &str = \"crate::cli\";\nconst R: &str = r#\"crate::\"cli\"#;\n\
                 pub(crate) fn f() {}\nlet my_crate = 1; my_crate::x();\n";
    assert_eq!(found(quiet, 1), refs(&[]));
    // Char literals and lifetimes do not hide what follows them.
    let chars = "fn f<'a>(s: &'a str) -> char { let q = '\"'; let e = '\\''; crate::logging::info(s); 'x' }\n";
    assert_eq!(found(chars, 1), refs(&[(1, "logging")]));
    // `$crate` in macros.
    assert_eq!(found("macro_rules! m { () => { $crate::ops::util::f() }; }", 2), refs(&[(1, "ops")]));
    // `super` chains: only those that climb exactly to the crate root; inline modules count.
    assert_eq!(found("use super::config::BertConfig;", 2), refs(&[]));
    assert_eq!(found("use super::super::cli::run;", 2), refs(&[(1, "cli")]));
    assert_eq!(found("use super::cli;", 1), refs(&[(1, "cli")]));
    let tests_mod = "mod tests {\n    use super::*;\n    use super::super::metakd;\n}\nuse super::apps;\n";
    assert_eq!(found(tests_mod, 1), refs(&[(3, "metakd"), (5, "apps")]));
    assert_eq!(found("pub(super) fn f() {}\npub(in crate::model) fn g() {}", 2), refs(&[(2, "model")]));
    // The layer-table and lib.rs readers.
    let doc = "# x\n<!-- layers -->\n| rank | module | what it holds |\n|---|---|---|\n| 0 | `rng` | seeded random numbers |\n\
               | 1 | device | device choice |\n<!-- /layers -->\n";
    let table = layer_table(doc).unwrap();
    assert_eq!(table.into_iter().collect::<Vec<_>>(), vec![("device".to_string(), 1), ("rng".to_string(), 0)]);
    assert!(layer_table(&doc.replace("| 1 | device", "| one | device")).unwrap_err()[0].contains("ARCHITECTURE.md:6"));
    assert!(layer_table(&doc.replace("| 1 | device", "| 1 | rng")).unwrap_err()[0].contains("listed twice"));
    let lib = "//! mod fake;\npub mod a;\nmod b;\n#[cfg(test)]\npub(crate) mod c { mod inner; }\npub use a::run;\n";
    assert_eq!(declared_modules(lib), vec![("a".to_string(), 2), ("b".to_string(), 3), ("c".to_string(), 5)]);
    // The verdicts: upward, sideways (same rank) and downward references, and the message format.
    let ranks: BTreeMap<String, usize> =
        [("rng", 0), ("logging", 0), ("data", 2), ("config", 5), ("cli", 10)].map(|(m, r)| (m.to_string(), r)).into();
    let file = SourceFile { rel: "src/data/batch.rs".into(), module: "data".into(), depth: 2 };
    let source = "use crate::rng::Rng;\nuse crate::{cli::args::Args, data::x};\n// use crate::config;\n\
                  /// [`crate::cli`]\nfn f() { crate::config::run::RunConfig::new(); crate::run(); }\n";
    assert_eq!(
        layering_violations(&file, source, &ranks),
        vec![
            "src/data/batch.rs:2: module data (rank 2) imports cli (rank 10)".to_string(),
            "src/data/batch.rs:5: module data (rank 2) imports config (rank 5)".to_string(),
            "src/data/batch.rs:5: module data (rank 2) imports crate::run, which is not a module of the layer \
             table (name the module that defines it)"
                .to_string(),
        ]
    );
    let leaf = SourceFile { rel: "src/rng.rs".into(), module: "rng".into(), depth: 1 };
    assert_eq!(
        layering_violations(&leaf, "use crate::logging;", &ranks),
        vec!["src/rng.rs:1: module rng (rank 0) imports logging (rank 0)".to_string()]
    );
}
