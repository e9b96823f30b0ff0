//! The import graph of one crate target: which file imports from which, and its cycles.
//!
//! Edges are read from `use` declarations and from `crate::`/`super::` paths in code,
//! resolved to the file that defines the named item (following `pub use` re-exports), so a
//! file that only re-exports is not a hub that every user loops through.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use crate::source::{code_only, rust_files};

/// One crate target: its root file and the module path of each of its files.
pub struct Target {
    files: BTreeMap<Vec<String>, PathBuf>,
}

/// Module path of `file` in the target rooted at `root_dir` (the directory holding the
/// root file): `a/b.rs` and `a/b/mod.rs` are `a::b`; the root file is `[]`.
fn module_path(root_dir: &Path, root: &Path, file: &Path) -> Option<Vec<String>> {
    if file == root {
        return Some(Vec::new());
    }
    let rel = file.strip_prefix(root_dir).ok()?;
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    if last != "mod.rs" {
        parts.push(last.strip_suffix(".rs")?.to_string());
    }
    Some(parts)
}

/// The crate targets of one crate directory: the library, each binary and each test target.
pub fn targets(crate_dir: &Path) -> Vec<Target> {
    // (root file, the directory its modules live in, whether it has modules at all)
    let mut roots: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    let src = crate_dir.join("src");
    let bin = src.join("bin");
    if src.join("lib.rs").exists() {
        roots.push((src.join("lib.rs"), src.clone(), true));
    }
    for dir in [bin.clone(), crate_dir.join("tests")] {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && p.join("main.rs").exists() {
                roots.push((p.join("main.rs"), p.clone(), true));
            } else if p.extension().is_some_and(|x| x == "rs") {
                roots.push((p.clone(), dir.clone(), false));
            }
        }
    }
    roots
        .into_iter()
        .map(|(root, dir, nested)| {
            let mut files = Vec::new();
            if nested {
                rust_files(&dir, &mut files);
            } else {
                files.push(root.clone());
            }
            let files = files
                .into_iter()
                .filter(|f| !(root.ends_with("lib.rs") && f.starts_with(&bin)))
                .filter(|f| {
                    *f == root
                        || !f
                            .file_name()
                            .is_some_and(|n| n == "main.rs" || n == "lib.rs")
                })
                .filter_map(|f| Some((module_path(&dir, &root, &f)?, f)))
                .collect();
            Target { files }
        })
        .collect()
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into full paths of identifiers.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut p = prefix.to_vec();
        p.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &p, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &p, out);
    } else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        if path.is_empty() {
            return;
        }
        let mut p = prefix.to_vec();
        p.extend(path.split("::").map(|s| s.trim().to_string()));
        out.push(p);
    }
}

/// A path as written in one file: the segments and the inline-module nesting it was
/// written in (for `self`/`super`).
struct Written {
    segs: Vec<String>,
    inline: Vec<String>,
    is_use: bool,
    public: bool,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// Reads the `use` declarations and the `crate::`/`super::`/`self::` paths of one file.
fn read_paths(code: &str) -> Vec<Written> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    let word_at = |i: usize| -> Option<(String, usize)> {
        let (start, c) = chars[i];
        if !is_ident_start(c) {
            return None;
        }
        if i > 0 && (chars[i - 1].1.is_ascii_alphanumeric() || chars[i - 1].1 == '_') {
            return None;
        }
        let mut j = i;
        while j < chars.len() && (chars[j].1.is_ascii_alphanumeric() || chars[j].1 == '_') {
            j += 1;
        }
        let end = chars.get(j).map_or(code.len(), |c| c.0);
        Some((code[start..end].to_string(), j))
    };
    let mut pending_mod: Option<String> = None;
    while i < chars.len() {
        let c = chars[i].1;
        if c == '{' {
            depth += 1;
            if let Some(m) = pending_mod.take() {
                inline.push((m, depth));
            }
            i += 1;
            continue;
        }
        if c == '}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth -= 1;
            i += 1;
            continue;
        }
        if c == ';' {
            pending_mod = None;
        }
        let Some((w, j)) = word_at(i) else {
            i += 1;
            continue;
        };
        let names: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
        if w == "mod" {
            // `mod name {` opens an inline module; `mod name;` names a file.
            let rest = code[chars.get(j).map_or(code.len(), |c| c.0)..].trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            pending_mod = Some(name);
            i = j;
            continue;
        }
        if w == "use" {
            let start = chars.get(j).map_or(code.len(), |c| c.0);
            let end = code[start..].find(';').map_or(code.len(), |e| start + e);
            let before = code[..chars[i].0].trim_end();
            let public = before.ends_with("pub") || before.ends_with(')');
            let mut paths = Vec::new();
            expand_use(&code[start..end], &[], &mut paths);
            for segs in paths {
                out.push(Written {
                    segs,
                    inline: names.clone(),
                    is_use: true,
                    public,
                });
            }
            while i < chars.len() && chars[i].0 < end {
                i += 1;
            }
            continue;
        }
        if (w == "crate" || w == "super")
            && code[chars.get(j).map_or(code.len(), |c| c.0)..].starts_with("::")
        {
            let start = chars[i].0;
            let mut k = j;
            // Take `seg::seg::...` as far as identifiers go.
            loop {
                let at = chars.get(k).map_or(code.len(), |c| c.0);
                if !code[at..].starts_with("::") {
                    break;
                }
                let nk = k + 2;
                match chars.get(nk) {
                    Some((_, c)) if is_ident_start(*c) => {
                        k = nk;
                        while k < chars.len()
                            && (chars[k].1.is_ascii_alphanumeric() || chars[k].1 == '_')
                        {
                            k += 1;
                        }
                    }
                    _ => break,
                }
            }
            let end = chars.get(k).map_or(code.len(), |c| c.0);
            let segs = code[start..end].split("::").map(String::from).collect();
            out.push(Written {
                segs,
                inline: names,
                is_use: false,
                public: false,
            });
            i = k;
            continue;
        }
        i = j;
    }
    out
}

/// Makes a written path absolute (from the crate root), given the module path of the file
/// and the inline modules it was written in. `None` for paths into other crates.
fn absolute(
    w: &Written,
    file_mod: &[String],
    known_child: impl Fn(&[String]) -> bool,
) -> Option<Vec<String>> {
    let mut here: Vec<String> = file_mod.to_vec();
    here.extend(w.inline.iter().cloned());
    let mut segs = w.segs.clone();
    let base = match segs.first().map(String::as_str) {
        Some("crate") => {
            segs.remove(0);
            Vec::new()
        }
        Some("self") => {
            segs.remove(0);
            here
        }
        Some("super") => {
            let mut b = here;
            while segs.first().is_some_and(|s| s == "super") {
                segs.remove(0);
                b.pop();
            }
            b
        }
        Some(first) if w.is_use => {
            // A relative `use child::x` names a child module of this one.
            let mut c = here.clone();
            c.push(first.to_string());
            if known_child(&c) {
                here
            } else {
                return None;
            }
        }
        _ => return None,
    };
    let mut p = base;
    p.extend(segs);
    Some(p)
}

pub struct Graph {
    /// file -> the files it imports from
    pub edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

pub fn crate_graph(t: &Target) -> Graph {
    let sources: HashMap<&Vec<String>, Vec<Written>> = t
        .files
        .iter()
        .map(|(m, f)| {
            (
                m,
                read_paths(&code_only(&fs::read_to_string(f).unwrap_or_default())),
            )
        })
        .collect();
    let known = |m: &[String]| t.files.contains_key(m);
    // Re-exports: (module, name) -> absolute path it stands for.
    let mut reexports: HashMap<(Vec<String>, String), Vec<String>> = HashMap::new();
    for (m, ws) in &sources {
        for w in ws.iter().filter(|w| w.is_use && w.public) {
            if let (Some(abs), Some(last)) = (absolute(w, m, known), w.segs.last()) {
                if last != "*" && last != "self" {
                    reexports.insert(((*m).clone(), last.clone()), abs);
                }
            }
        }
    }
    // The file that defines what `path` names.
    let resolve = |path: &[String]| -> Option<PathBuf> {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let mut m: Vec<String> = Vec::new();
            let mut n = 0;
            while n < path.len() && known(&[m.as_slice(), &path[n..=n]].concat()) {
                m.push(path[n].clone());
                n += 1;
            }
            match path.get(n) {
                Some(name) => match reexports.get(&(m.clone(), name.clone())) {
                    Some(target) if target.as_slice() != path.as_slice() => {
                        let mut next = target.clone();
                        next.extend(path[n + 1..].iter().cloned());
                        path = next;
                    }
                    _ => return t.files.get(&m).cloned(),
                },
                None => return t.files.get(&m).cloned(),
            }
        }
        None
    };
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (m, ws) in &sources {
        let from = t.files[*m].clone();
        for w in ws {
            let Some(abs) = absolute(w, m, known) else {
                continue;
            };
            if let Some(to) = resolve(&abs) {
                if to != from {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    Graph { edges }
}

/// The cycles of a graph, one per strongly connected component of more than one file.
pub fn cycles(g: &Graph) -> Vec<Vec<PathBuf>> {
    // Tarjan's algorithm, iterative enough for a few hundred files.
    struct S<'a> {
        g: &'a Graph,
        index: HashMap<&'a Path, usize>,
        low: HashMap<&'a Path, usize>,
        stack: Vec<&'a Path>,
        on: BTreeSet<&'a Path>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut S<'a>, v: &'a Path) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        if let Some(ws) = s.g.edges.get(v) {
            for w in ws {
                let w: &'a Path = w.as_path();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_path_buf());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = S {
        g,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.edges.keys() {
        if !s.index.contains_key(v.as_path()) {
            visit(&mut s, v.as_path());
        }
    }
    s.out
}
