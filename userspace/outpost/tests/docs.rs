//! The docs name what the code has, and nothing it does not: every config key (docs/
//! configuration.md), every command and flag (docs/operations.md), every metric and every audit
//! kind (docs/observability.md). Each side is read from its source, never from a list kept
//! here:
//!
//! - config keys: the `#[derive(Deserialize)]` structs under `userspace/`. A struct whose doc
//!   comment opens with `` `[section]` `` or `` `[[section]]` `` is that section; a field whose
//!   type is another such struct (through `Option`/`Vec`) is a subsection; `#[serde(flatten)]`
//!   fields are passed-through tables owned by another section. The root is
//!   `outpost_proxy::config::Config`. Keys written in `outpost.example.toml` (commented out or
//!   not) must exist too.
//! - commands and flags: the built binary's `--help`, subcommand by subcommand.
//! - metrics: string literals `"outpost_…"` in the non-test sources under `userspace/`, less
//!   crate names, tracing targets and BPF program names.
//! - audit kinds: the literal kind passed to `event(`, `request_event(` and `node_event(`, and
//!   `kind: "…"` in an `AuditEvent` literal.
//!
//! On failure it lists every mismatch with the file to fix and the line to add or remove.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_outpost");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// Non-test Rust sources under `userspace/`: (path relative to the workspace, text without its
/// `#[cfg(test)] mod tests`).
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                // Tests, benches and the test kit name metrics and kinds they check, not ones
                // the edge has.
                if !matches!(name.as_str(), "tests" | "benches" | "testkit" | "templates") {
                    walk(&p, out);
                }
            } else if name.ends_with(".rs") {
                out.push(p);
            }
        }
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root.join("userspace"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            (p.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

/// `(line number, line)` of a doc page, fenced code blocks left out.
fn doc_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The first cell of a Markdown table row, when it is code: `| `x` | ...` gives `x`.
fn first_code_cell(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix('|')?.trim_start();
    let rest = rest.strip_prefix('`')?;
    Some(&rest[..rest.find('`')?])
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Everything wrong, grouped by the file to fix.
#[derive(Default)]
struct Problems(BTreeMap<String, Vec<String>>);

impl Problems {
    fn add(&mut self, file: &str, what: String) {
        self.0.entry(file.to_owned()).or_default().push(what);
    }

    fn check(self, what: &str) {
        if self.0.is_empty() {
            return;
        }
        let mut msg = format!("the docs and the code disagree on {what}:\n");
        for (file, list) in self.0 {
            msg += &format!("\n{file}:\n");
            for p in list {
                msg += &format!("  - {p}\n");
            }
        }
        panic!("{msg}");
    }
}

// ---- config keys ----

struct Field {
    name: String,
    ty: String,
}

struct Struct {
    file: String,
    name: String,
    /// The section its doc comment names, if any.
    section: Option<String>,
    fields: Vec<Field>,
}

/// `#[derive(... Deserialize ...)]` structs with named fields, as rustfmt writes them.
fn deserialize_structs(file: &str, text: &str) -> Vec<Struct> {
    let mut out = Vec::new();
    let mut docs: Vec<&str> = Vec::new();
    let mut attrs: Vec<&str> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(d) = t.strip_prefix("///") {
            docs.push(d.trim());
            continue;
        }
        if t.starts_with("#[") {
            attrs.push(t);
            continue;
        }
        let header = t.strip_prefix("pub ").unwrap_or(t).strip_prefix("struct ");
        let derives = attrs.iter().any(|a| a.starts_with("#[derive(") && a.contains("Deserialize"));
        if let (Some(h), true) = (header, derives) {
            if h.ends_with('{') {
                let name: String =
                    h.bytes().take_while(|b| is_ident_byte(*b)).map(char::from).collect();
                if attrs.iter().any(|a| a.contains("rename_all")) {
                    panic!(
                        "{file}: struct {name} uses serde rename_all, which docs.rs does not read"
                    );
                }
                let section = docs.first().and_then(|d| {
                    let d = d.strip_prefix('`')?;
                    let d = d.trim_start_matches('[');
                    let end = d.find(']')?;
                    Some(d[..end].to_owned())
                });
                let mut fields = Vec::new();
                let mut field_attrs: Vec<&str> = Vec::new();
                for l in lines.by_ref() {
                    let ft = l.trim();
                    if l.starts_with('}') {
                        break;
                    }
                    if ft.starts_with("#[") {
                        field_attrs.push(ft);
                        continue;
                    }
                    if ft.starts_with("//") || ft.is_empty() {
                        continue;
                    }
                    let decl = ft.strip_prefix("pub ").unwrap_or(ft);
                    let decl = decl.strip_prefix("pub(crate) ").unwrap_or(decl);
                    if let Some((n, ty)) = decl.split_once(": ") {
                        let skip =
                            field_attrs.iter().any(|a| a.contains("flatten") || a.contains("skip"));
                        if field_attrs.iter().any(|a| a.contains("rename")) {
                            panic!(
                                "{file}: {name}.{n} uses serde rename, which docs.rs does not read"
                            );
                        }
                        if !skip {
                            fields.push(Field {
                                name: n.to_owned(),
                                ty: ty.trim_end_matches(',').to_owned(),
                            });
                        }
                    }
                    field_attrs.clear();
                }
                out.push(Struct { file: file.to_owned(), name, section, fields });
            }
        }
        docs.clear();
        attrs.clear();
    }
    out
}

/// The struct a field's type names, through `Option`, `Vec` and `Box`.
fn inner_type(ty: &str) -> &str {
    let mut t = ty.trim();
    for wrapper in ["Option<", "Vec<", "Box<"] {
        if let Some(rest) = t.strip_prefix(wrapper) {
            t = rest.strip_suffix('>').unwrap_or(rest);
            return inner_type(t);
        }
    }
    t.rsplit("::").next().unwrap_or(t)
}

/// Every key the code reads: `section.key` (`key` at the top level) → where it is declared.
fn code_config_keys() -> BTreeMap<String, String> {
    let structs: Vec<Struct> =
        sources().iter().flat_map(|(f, t)| deserialize_structs(f, t)).collect();
    assert!(
        structs.iter().any(|s| s.file.ends_with("proxy/src/config.rs") && s.name == "Config"),
        "docs.rs found no `Config` struct in userspace/proxy/src/config.rs"
    );
    let find = |name: &str, near: &str| -> Option<&Struct> {
        let same: Vec<&Struct> = structs.iter().filter(|s| s.name == name).collect();
        same.iter().find(|s| s.file == near).or(same.first()).copied()
    };
    let mut keys = BTreeMap::new();
    let mut reached = BTreeSet::new();
    let mut stack: Vec<(String, &Struct)> = structs
        .iter()
        .filter(|s| s.file.ends_with("proxy/src/config.rs") && s.name == "Config")
        .map(|s| (String::new(), s))
        .chain(structs.iter().filter_map(|s| Some((s.section.clone()?, s))))
        .collect();
    while let Some((section, s)) = stack.pop() {
        if !reached.insert((section.clone(), s.file.clone(), s.name.clone())) {
            continue;
        }
        for f in &s.fields {
            let path =
                if section.is_empty() { f.name.clone() } else { format!("{section}.{}", f.name) };
            match find(inner_type(&f.ty), &s.file) {
                Some(sub) if !sub.fields.is_empty() => {
                    if let Some(own) = &sub.section {
                        assert_eq!(
                            own, &path,
                            "{}: struct {} says it is `[{own}]` but {}.{} puts it at `[{path}]`",
                            sub.file, sub.name, s.name, f.name
                        );
                    }
                    stack.push((path, sub));
                }
                _ => {
                    keys.insert(
                        path,
                        format!("{} (struct {}, field `{}`)", s.file, s.name, f.name),
                    );
                }
            }
        }
    }
    // A config struct nothing reaches would be a section the docs test cannot see.
    for s in structs.iter().filter(|s| s.file.ends_with("config.rs") && !s.fields.is_empty()) {
        assert!(
            reached.iter().any(|(_, f, n)| *f == s.file && *n == s.name),
            "{}: struct {} derives Deserialize but no section reaches it; open its doc comment \
             with `[section]` so docs.rs (and readers) know where it goes",
            s.file,
            s.name
        );
    }
    keys
}

/// `section.key` → line, from configuration.md: rows `| `key` | ... |` under a heading that
/// names `` `[section]` `` or `` `[[section]]` `` ("Top level" for the file's own keys).
fn doc_config_keys(text: &str) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    let mut section: Option<String> = None;
    for (n, line) in doc_lines(text) {
        if line.starts_with('#') {
            section = if line.to_ascii_lowercase().contains("top level") {
                Some(String::new())
            } else {
                line.find("`[").map(|i| {
                    let s = line[i + 1..].trim_start_matches('[');
                    s[..s.find(']').unwrap_or(s.len())].to_owned()
                })
            };
            continue;
        }
        if let (Some(sec), Some(key)) = (&section, first_code_cell(line)) {
            let path = if sec.is_empty() { key.to_owned() } else { format!("{sec}.{key}") };
            keys.insert(path, n);
        }
    }
    keys
}

/// `section.key` → line, from outpost.example.toml, commented-out keys included; keys of
/// map-valued tables (`[floor.port_modes]`) are data, not keys.
fn example_keys(text: &str, code: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start_matches('#').trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let Some((k, _)) = t.split_once(" = ") else { continue };
        if k.is_empty() || !k.bytes().all(is_ident_byte) {
            continue;
        }
        if code.contains_key(&section) {
            continue; // a map-valued key's own table
        }
        let path = if section.is_empty() { k.to_owned() } else { format!("{section}.{k}") };
        keys.insert(path, i + 1);
    }
    keys
}

#[test]
fn every_config_key_is_documented() {
    let code = code_config_keys();
    let page = "docs/configuration.md";
    let docs = doc_config_keys(&read(page));
    let mut p = Problems::default();
    for (key, at) in &code {
        if !docs.contains_key(key) {
            let (sec, k) = key.rsplit_once('.').unwrap_or(("", key));
            let heading = if sec.is_empty() { "## Top level".into() } else { format!("`[{sec}]`") };
            p.add(page, format!("no row for `{key}` (declared in {at}): add `| `{k}` | default | meaning |` under the {heading} heading"));
        }
    }
    for (key, line) in &docs {
        if !code.contains_key(key) {
            p.add(page, format!("line {line}: `{key}` is no key of the code: remove the row or fix its name/section"));
        }
    }
    let example = "userspace/outpost/outpost.example.toml";
    for (key, line) in example_keys(&read(example), &code) {
        if !code.contains_key(&key) {
            p.add(example, format!("line {line}: `{key}` is no key of the code"));
        }
    }
    p.check("config keys");
}

// ---- commands and flags ----

/// `outpost <path> --help`: (subcommands, long flags).
fn help(path: &[String]) -> (Vec<String>, BTreeSet<String>) {
    let out = Command::new(BIN).args(path).arg("--help").env("COLUMNS", "1000").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "outpost {} --help failed:\n{text}", path.join(" "));
    let (mut subs, mut flags) = (Vec::new(), BTreeSet::new());
    let mut block = "";
    for line in text.lines() {
        if !line.starts_with(' ') {
            block = line.trim_end_matches(':');
            continue;
        }
        let t = line.trim_start();
        match block {
            "Commands" => {
                let name = t.split_whitespace().next().unwrap_or("");
                if !name.is_empty() && name != "help" {
                    subs.push(name.to_owned());
                }
            }
            "Options" if t.starts_with('-') => {
                if let Some(i) = t.find("--") {
                    let f: String = t[i..]
                        .bytes()
                        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
                        .map(char::from)
                        .collect();
                    // clap's own; `outpost clients --version V` is a filter, not these.
                    let generated =
                        f == "--help" || (f == "--version" && t.contains("Print version"));
                    if !generated {
                        flags.insert(f);
                    }
                }
            }
            _ => {}
        }
    }
    (subs, flags)
}

/// Every command path, with the flags it adds to its parent's (global flags are documented
/// once, where they are defined).
fn commands() -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(Vec::<String>::new(), BTreeSet::<String>::new())];
    while let Some((path, parent)) = stack.pop() {
        let (subs, flags) = help(&path);
        let own: BTreeSet<String> = flags.difference(&parent).cloned().collect();
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            stack.push((p, flags.clone()));
        }
        out.insert(path.join(" "), (own, flags));
    }
    out
}

#[test]
fn every_command_and_flag_is_documented() {
    let page = "docs/operations.md";
    let text = read(page);
    // `### `outpost a b`` → (line, flags in the section, flags in its table's first cells).
    let mut docs: BTreeMap<String, (usize, BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, line) in doc_lines(&text) {
        if line.starts_with('#') {
            // Only a heading that is a command and nothing else: `### `outpost policy set``.
            let h = line.trim_start_matches('#').trim();
            current = h.strip_prefix("`outpost").and_then(|r| r.strip_suffix('`')).map(|cmd| {
                let cmd = cmd.trim().to_owned();
                docs.insert(cmd.clone(), (n, BTreeSet::new(), BTreeSet::new()));
                cmd
            });
            continue;
        }
        let Some(cmd) = &current else { continue };
        let entry = docs.get_mut(cmd).unwrap();
        let mut rest = line;
        while let Some(i) = rest.find("--") {
            let f: String = rest[i..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
                .map(char::from)
                .collect();
            rest = &rest[i + f.len().max(2)..];
            if f.len() > 2 {
                entry.1.insert(f);
            }
        }
        if let Some(cell) = first_code_cell(line) {
            if let Some(f) = cell.split_whitespace().next().filter(|f| f.starts_with("--")) {
                entry.2.insert(f.to_owned());
            }
        }
    }
    let mut p = Problems::default();
    for (cmd, (own, all)) in commands() {
        let shown = if cmd.is_empty() { "outpost".to_owned() } else { format!("outpost {cmd}") };
        let Some((line, mentioned, rows)) = docs.get(&cmd) else {
            p.add(
                page,
                format!(
                    "no heading for `{shown}`: add `### `{shown}`` with a row per flag: {own:?}"
                ),
            );
            continue;
        };
        for f in own.difference(mentioned) {
            p.add(page, format!("`{shown}` (line {line}): flag `{f}` is not documented: add `| `{f} …` | meaning |`"));
        }
        for f in rows.difference(&all) {
            p.add(
                page,
                format!(
                    "`{shown}` (line {line}): `{f}` is no flag of this command (`{shown} --help`)"
                ),
            );
        }
    }
    let known: BTreeSet<String> = commands().into_keys().collect();
    for (cmd, (line, _, _)) in &docs {
        if !known.contains(cmd) {
            p.add(page, format!("line {line}: `outpost {cmd}` is no command of the binary: remove or rename the heading"));
        }
    }
    p.check("commands and flags");
}

// ---- metrics ----

/// Names that look like metrics and are not: crate names and BPF program names.
fn not_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let root = root();
    let mut manifests = vec![root.join("Cargo.toml")];
    let members = read("Cargo.toml");
    for line in members.lines() {
        let t = line.trim().trim_end_matches(',');
        if let Some(m) = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            manifests.push(root.join(m).join("Cargo.toml"));
        }
    }
    for m in manifests {
        let Ok(text) = fs::read_to_string(&m) else { continue };
        for line in text.lines() {
            if let Some(n) = line.trim().strip_prefix("name = \"") {
                names.insert(n.trim_end_matches('"').replace('-', "_"));
            }
        }
    }
    for line in read("ebpf/outpost-common/src/maps.rs").lines() {
        if let Some((_, v)) =
            line.trim().strip_prefix("pub const PROG_").and_then(|l| l.split_once("= \""))
        {
            names.insert(v.trim_end_matches("\";").to_owned());
        }
    }
    // Functions of the BPF program (a global function the verifier checks on its own).
    for file in ["main.rs", "tls.rs", "packet.rs", "maps.rs", "reset.rs"] {
        let Ok(text) = fs::read_to_string(root.join("ebpf/outpost-ebpf/src").join(file)) else {
            continue;
        };
        for line in text.lines() {
            if let Some(rest) = line.split("fn outpost_").nth(1) {
                let name: String =
                    rest.bytes().take_while(|b| is_ident_byte(*b)).map(char::from).collect();
                names.insert(format!("outpost_{name}"));
            }
        }
    }
    names
}

/// `outpost_[a-z0-9_]+` tokens of `text` not followed by `::` (a path, a tracing target).
fn outpost_tokens(text: &str, after_quote_only: bool) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let b = line.as_bytes();
        let mut i = 0;
        while let Some(j) = line[i..].find("outpost_") {
            let s = i + j;
            let mut e = s + "outpost_".len();
            while e < b.len()
                && (b[e].is_ascii_lowercase() || b[e].is_ascii_digit() || b[e] == b'_')
            {
                e += 1;
            }
            i = e;
            let prev = if s == 0 { b' ' } else { b[s - 1] };
            if is_ident_byte(prev) || line[e..].starts_with("::") || e == s + "outpost_".len() {
                continue;
            }
            let quoted =
                prev == b'"' || line[..s].ends_with("# TYPE ") || line[..s].ends_with("# HELP ");
            if after_quote_only && !quoted {
                continue;
            }
            out.push((ln + 1, line[s..e].to_owned()));
        }
    }
    out
}

/// Metric families the code exposes → where first seen.
fn code_metrics() -> BTreeMap<String, String> {
    let skip = not_metrics();
    let mut found = BTreeMap::new();
    for (file, text) in sources() {
        let code: String = text
            .lines()
            .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
            .collect::<Vec<_>>()
            .join("\n");
        for (line, name) in outpost_tokens(&code, true) {
            if !skip.contains(&name) {
                found.entry(name).or_insert(format!("{file}:{line}"));
            }
        }
    }
    // A summary's `_sum` and `_count` belong to its family.
    let names: BTreeSet<String> = found.keys().cloned().collect();
    found.retain(|n, _| {
        !["_sum", "_count", "_bucket"]
            .iter()
            .any(|s| n.strip_suffix(s).is_some_and(|base| names.contains(base)))
    });
    found
}

#[test]
fn every_metric_is_documented() {
    let code = code_metrics();
    assert!(code.contains_key("outpost_requests_total"), "docs.rs found no metrics: {code:?}");
    let page = "docs/observability.md";
    let text = read(page);
    let rows: BTreeMap<String, usize> = doc_lines(&text)
        .into_iter()
        .filter_map(|(n, l)| {
            let cell = first_code_cell(l)?;
            let name = cell.split(['{', ' ']).next()?;
            name.starts_with("outpost_").then(|| (name.to_owned(), n))
        })
        .collect();
    let mut p = Problems::default();
    for (m, at) in &code {
        if !rows.contains_key(m) {
            p.add(page, format!("no row for metric `{m}` (in {at}): add `| `{m}{{labels}}` | type | meaning |` to the metrics table"));
        }
    }
    // Anywhere in the docs: a name that looks like a metric must be one.
    let skip = not_metrics();
    let mut pages = vec!["README.md".to_owned(), "benches/README.md".to_owned()];
    for e in fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let families: BTreeSet<&str> = code.keys().map(String::as_str).collect();
    for page in pages {
        for (line, name) in outpost_tokens(&read(&page), false) {
            let family = ["_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| families.contains(b)))
                .unwrap_or(&name);
            // `outpost_legacy_*`: a prefix, which some family must have.
            let prefix = name.ends_with('_') && families.iter().any(|f| f.starts_with(&name));
            if !families.contains(family) && !skip.contains(&name) && !prefix {
                p.add(&page, format!("line {line}: `{name}` is no metric of the code"));
            }
        }
    }
    p.check("metrics");
}

// ---- audit kinds ----

/// A kind: `app.event` or `app.event.more`, lowercase.
fn is_kind(s: &str) -> bool {
    s.contains('.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// The top-level arguments of the call whose `(` is at `text[0]`.
fn call_args(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut args, mut in_str) = (0, 1, Vec::new(), false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    args.push(text[start..i].trim());
                    break;
                }
            }
            ',' if depth == 1 => {
                args.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    args
}

/// Audit kinds the code emits → where first seen.
fn code_audit_kinds() -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
    for (file, text) in sources() {
        // `const NAME: &str = "x.y";` of this file, for kinds passed by name.
        let consts: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| {
                let l = l.trim().strip_prefix("pub ").unwrap_or(l.trim());
                let (name, v) = l.strip_prefix("const ")?.split_once(": &str = \"")?;
                Some((name, v.strip_suffix("\";")?))
            })
            .collect();
        let line_of = |i: usize| text[..i].lines().count().max(1);
        for pat in [".event(", "request_event(", "node_event("] {
            for (i, _) in text.match_indices(pat) {
                let prev = text[..i].bytes().last().unwrap_or(b' ');
                if pat != ".event(" && is_ident_byte(prev) {
                    continue;
                }
                let line = text[..i].lines().last().unwrap_or("");
                if line.contains("fn ") {
                    continue;
                }
                let open = i + pat.len() - 1;
                let args = call_args(&text[open..]);
                let literal = args.iter().find_map(|a| a.strip_prefix('"')?.strip_suffix('"'));
                match literal {
                    Some(k) if is_kind(k) => {
                        found.entry(k.to_owned()).or_insert(format!("{file}:{}", line_of(i)));
                    }
                    _ => {
                        // A kind passed on by a wrapper (`kind`), or by a const of this file.
                        let named = args.iter().find_map(|a| consts.get(a).filter(|v| is_kind(v)));
                        match named {
                            Some(k) => {
                                found
                                    .entry(k.to_string())
                                    .or_insert(format!("{file}:{}", line_of(i)));
                            }
                            None if args.contains(&"kind") => {}
                            None => problems.push(format!(
                                "{file}:{}: cannot read the audit kind of `{}`; pass it as a \
                                 literal or a const of the same file",
                                line_of(i),
                                text[i..].lines().next().unwrap_or("")
                            )),
                        }
                    }
                }
            }
        }
        for (i, _) in text.match_indices("kind: \"") {
            let v = &text[i + "kind: \"".len()..];
            let k = &v[..v.find('"').unwrap_or(0)];
            if is_kind(k) {
                found.entry(k.to_owned()).or_insert(format!("{file}:{}", line_of(i)));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    found
}

#[test]
fn every_audit_kind_is_documented() {
    let code = code_audit_kinds();
    assert!(code.contains_key("access.login"), "docs.rs found no audit kinds: {code:?}");
    let page = "docs/observability.md";
    let text = read(page);
    let rows: BTreeMap<String, usize> = doc_lines(&text)
        .into_iter()
        .filter_map(|(n, l)| first_code_cell(l).filter(|c| is_kind(c)).map(|c| (c.to_owned(), n)))
        .collect();
    let mut p = Problems::default();
    for (k, at) in &code {
        if !rows.contains_key(k) {
            p.add(page, format!("no row for audit kind `{k}` (emitted at {at}): add `| `{k}` | outcomes | when |` to the audit table"));
        }
    }
    for (k, line) in &rows {
        if !code.contains_key(k) {
            p.add(page, format!("line {line}: audit kind `{k}` is emitted nowhere in the code"));
        }
    }
    p.check("audit kinds");
}
