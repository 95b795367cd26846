//! The files of `src/` import one another in one direction: no file reaches, through the paths
//! it names, a file that names it back, and no file names one of a layer above its own
//! ([`LAYERS`], as ARCHITECTURE.md lists them).
//!
//! Every file is read with `syn` and mapped to its module (`src/a/mod.rs` and `src/a.rs` are
//! `crate::a`). Each path it names — in `use` trees, expressions, types, patterns, macro
//! invocations and the bodies of its own macros — is resolved (`crate::`, `super::`, `self::`,
//! `$crate::`, a child module or a name brought in by `use`) to the file of the longest module
//! prefix, following a module's `use` to the file that defines the item. A `mod x;` and what a
//! module's file names of its own submodules are containment, not imports (a submodule may name
//! its parent); a `#[macro_export]` macro named `crate::name!` is its defining file. Test modules inside a file
//! count like the rest of it. `src/main.rs` is the binary, a crate of its own, and is skipped.

#[path = "support/metadata.rs"]
mod metadata;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Spacing, TokenStream, TokenTree};
use syn::visit::Visit;

type Module = Vec<String>;

/// The modules of `src/`, bottom layer first; a file belongs to the layer of the longest module
/// path listed that is a prefix of its own, and names nothing of a later layer.
/// The crate root (`""`, `lib.rs`: `mod` lines only) is at the bottom, so a module not listed
/// may name nothing above it.
const LAYERS: &[&[&str]] = &[
    &[
        "", "calendar", "domain", "revision", "proto", "rpc", "named", "status",
    ],
    &["policy"],
    &["metrics"],
    &["telemetry::layer"],
    &["telemetry"],
    &["audit"],
    &["store"],
    &["decision_log", "cache", "checkpoints"],
    &["policies"],
    &["auth"],
    &["limits"],
    &["error"],
    &["api"],
    &["admin", "scenarios", "console"],
    &["config"],
    &["startup"],
    &["cli"],
];

/// The layer of a module: the index in [`LAYERS`] of the longest listed prefix of its path.
fn layer_of(module: &Module) -> Option<usize> {
    let path = module.join("::");
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(layer, names)| names.iter().map(move |name| (layer, *name)))
        .filter(|(_, name)| {
            name.is_empty() || path == *name || path.starts_with(&format!("{name}::"))
        })
        .max_by_key(|(_, name)| name.len())
        .map(|(layer, _)| layer)
}

struct File {
    name: String,
    module: Module,
    syntax: syn::File,
    /// The names `use` brings into the file, each to its absolute path (without `crate`).
    aliases: BTreeMap<String, Module>,
}

struct Crate {
    files: Vec<File>,
    by_module: BTreeMap<Module, usize>,
    macros: BTreeMap<String, usize>,
}

impl Crate {
    fn read(root: &Path) -> Crate {
        let mut paths = Vec::new();
        collect(root, &mut paths);
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            if name == "main.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let syntax = syn::parse_file(&text).unwrap_or_else(|error| panic!("{name}: {error}"));
            let mut module: Module = name
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_owned)
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            files.push(File {
                name,
                module,
                syntax,
                aliases: BTreeMap::new(),
            });
        }
        let by_module = files
            .iter()
            .enumerate()
            .map(|(index, file)| (file.module.clone(), index))
            .collect();
        let mut krate = Crate {
            files,
            by_module,
            macros: BTreeMap::new(),
        };
        for index in 0..krate.files.len() {
            let mut uses = Uses {
                krate: &krate,
                module: krate.files[index].module.clone(),
                aliases: BTreeMap::new(),
                macros: Vec::new(),
            };
            uses.visit_file(&krate.files[index].syntax);
            let (aliases, macros) = (uses.aliases, uses.macros);
            krate.files[index].aliases = aliases;
            krate
                .macros
                .extend(macros.into_iter().map(|name| (name, index)));
        }
        krate
    }

    /// The absolute module path a path names, seen from `module` with `aliases` in scope;
    /// `None` for a path outside the crate.
    fn absolute(
        &self,
        module: &[String],
        aliases: &BTreeMap<String, Module>,
        segments: &[String],
    ) -> Option<Module> {
        let first = segments.first()?;
        match first.as_str() {
            "crate" | "$crate" => Some(segments[1..].to_vec()),
            "self" => Some([module, &segments[1..]].concat()),
            "super" => {
                let mut base = module.to_vec();
                let mut rest = segments;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                Some([base.as_slice(), rest].concat())
            }
            _ => {
                let child = [module, &segments[..1]].concat();
                if self.by_module.contains_key(&child) {
                    Some([module, segments].concat())
                } else {
                    let alias = aliases.get(first)?;
                    Some([alias.as_slice(), &segments[1..]].concat())
                }
            }
        }
    }

    /// The file defining what an absolute path names.
    fn file_of(&self, path: &[String], depth: usize) -> usize {
        if let [name] = path
            && let Some(file) = self.macros.get(name)
        {
            return *file;
        }
        let (file, rest) = (0..=path.len())
            .rev()
            .find_map(|length| {
                self.by_module
                    .get(&path[..length])
                    .map(|file| (*file, &path[length..]))
            })
            .expect("the crate root is a module");
        let defined = &self.files[file];
        match rest.first() {
            Some(name) if depth < 8 => match defined.aliases.get(name) {
                Some(target) if target.as_slice() != path => {
                    self.file_of(&[target.as_slice(), &rest[1..]].concat(), depth + 1)
                }
                _ => file,
            },
            _ => file,
        }
    }
}

fn collect(directory: &Path, paths: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, paths);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            paths.push(path);
        }
    }
}

/// Each leaf of a `use` tree: the path and the name it brings in (`None` for a glob).
fn use_leaves(
    tree: &syn::UseTree,
    prefix: &mut Module,
    leaves: &mut Vec<(Module, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            use_leaves(&path.tree, prefix, leaves);
            prefix.pop();
        }
        syn::UseTree::Name(name) => {
            let ident = name.ident.to_string();
            if ident == "self" {
                leaves.push((prefix.clone(), prefix.last().cloned()));
            } else {
                leaves.push((
                    [prefix.as_slice(), std::slice::from_ref(&ident)].concat(),
                    Some(ident),
                ));
            }
        }
        syn::UseTree::Rename(rename) => leaves.push((
            [prefix.as_slice(), &[rename.ident.to_string()]].concat(),
            Some(rename.rename.to_string()),
        )),
        syn::UseTree::Glob(_) => leaves.push((prefix.clone(), None)),
        syn::UseTree::Group(group) => {
            for tree in &group.items {
                use_leaves(tree, prefix, leaves);
            }
        }
    }
}

fn segments_of(path: &syn::Path) -> Module {
    path.segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect()
}

/// The first pass: what each `use` brings in, and the exported macros.
struct Uses<'a> {
    krate: &'a Crate,
    module: Module,
    aliases: BTreeMap<String, Module>,
    macros: Vec<String>,
}

impl<'ast> Visit<'ast> for Uses<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
        for (path, name) in leaves {
            let (Some(name), Some(absolute)) = (
                name,
                self.krate.absolute(&self.module, &self.aliases, &path),
            ) else {
                continue;
            };
            self.aliases.insert(name, absolute);
        }
    }

    fn visit_item_macro(&mut self, item: &'ast syn::ItemMacro) {
        let exported = item
            .attrs
            .iter()
            .any(|attribute| attribute.path().is_ident("macro_export"));
        if let (true, Some(ident)) = (exported, &item.ident) {
            self.macros.push(ident.to_string());
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }
}

/// The second pass: every path the file names, as edges to other files.
struct Paths<'a> {
    krate: &'a Crate,
    file: usize,
    module: Module,
    edges: &'a mut BTreeMap<(usize, usize), BTreeSet<String>>,
}

impl Paths<'_> {
    fn name(&mut self, segments: &[String]) {
        let krate = self.krate;
        let file = &krate.files[self.file];
        let Some(absolute) = self.krate.absolute(&self.module, &file.aliases, segments) else {
            return;
        };
        let target = self.krate.file_of(&absolute, 0);
        // A module's file names its submodules' items as their interface: containment.
        if !krate.files[target].module.starts_with(&file.module) {
            self.edges
                .entry((self.file, target))
                .or_default()
                .insert(absolute.join("::"));
        }
    }

    /// The paths in a macro's tokens: `a::b` sequences (and `$crate::a`).
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut index = 0;
        while index < tokens.len() {
            match &tokens[index] {
                TokenTree::Group(group) => self.tokens(group.stream()),
                TokenTree::Ident(ident) => {
                    let dollar = index > 0
                        && matches!(&tokens[index - 1], TokenTree::Punct(punct) if punct.as_char() == '$');
                    let mut segments = vec![if dollar && ident == "crate" {
                        "$crate".to_owned()
                    } else {
                        ident.to_string()
                    }];
                    while let (
                        Some(TokenTree::Punct(first)),
                        Some(TokenTree::Punct(second)),
                        Some(TokenTree::Ident(next)),
                    ) = (
                        tokens.get(index + 1),
                        tokens.get(index + 2),
                        tokens.get(index + 3),
                    ) {
                        if first.as_char() != ':'
                            || first.spacing() != Spacing::Joint
                            || second.as_char() != ':'
                        {
                            break;
                        }
                        segments.push(next.to_string());
                        index += 3;
                    }
                    if segments.len() > 1 {
                        self.name(&segments);
                    }
                }
                _ => {}
            }
            index += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Paths<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
        for (path, _) in leaves {
            self.name(&path);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.content.is_some() {
            self.module.push(item.ident.to_string());
            syn::visit::visit_item_mod(self, item);
            self.module.pop();
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.name(&segments_of(path));
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn loops(nodes: usize, edges: &BTreeMap<usize, BTreeSet<usize>>) -> Vec<Vec<usize>> {
    struct Search<'a> {
        edges: &'a BTreeMap<usize, BTreeSet<usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        stack: Vec<usize>,
        on_stack: Vec<bool>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    impl Search<'_> {
        fn visit(&mut self, node: usize) {
            self.index[node] = Some(self.next);
            self.low[node] = self.next;
            self.next += 1;
            self.stack.push(node);
            self.on_stack[node] = true;
            let edges = self.edges;
            for &target in edges.get(&node).into_iter().flatten() {
                match self.index[target] {
                    None => {
                        self.visit(target);
                        self.low[node] = self.low[node].min(self.low[target]);
                    }
                    Some(index) if self.on_stack[target] => {
                        self.low[node] = self.low[node].min(index);
                    }
                    Some(_) => {}
                }
            }
            if Some(self.low[node]) == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        edges,
        index: vec![None; nodes],
        low: vec![0; nodes],
        stack: Vec::new(),
        on_stack: vec![false; nodes],
        next: 0,
        found: Vec::new(),
    };
    for node in 0..nodes {
        if search.index[node].is_none() {
            search.visit(node);
        }
    }
    search.found
}

/// The files of `src/`, and each edge between them with the names it is made of; never empty.
fn read_src() -> (Crate, BTreeMap<(usize, usize), BTreeSet<String>>) {
    let krate = Crate::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut named = BTreeMap::new();
    for (index, file) in krate.files.iter().enumerate() {
        let mut paths = Paths {
            krate: &krate,
            file: index,
            module: file.module.clone(),
            edges: &mut named,
        };
        paths.visit_file(&file.syntax);
    }
    assert!(
        krate.files.len() >= 50,
        "read only {} files",
        krate.files.len()
    );
    assert!(named.len() >= 100, "found only {} edges", named.len());
    (krate, named)
}

/// An edge as a report line: `from -> to<note>: names`.
fn edge_line(
    krate: &Crate,
    (from, to): (usize, usize),
    note: &str,
    names: &BTreeSet<String>,
) -> String {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    format!(
        "  {} -> {}{note}: {}\n",
        krate.files[from].name,
        krate.files[to].name,
        names.join(", ")
    )
}

#[test]
fn the_files_of_src_import_in_one_direction() {
    let (krate, named) = read_src();
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (from, to) in named.keys() {
        edges.entry(*from).or_default().insert(*to);
    }
    let mut report = String::new();
    for component in loops(krate.files.len(), &edges) {
        report.push_str("a loop of files:\n");
        for (&(from, to), names) in &named {
            if component.contains(&from) && component.contains(&to) {
                report.push_str(&edge_line(&krate, (from, to), "", names));
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn no_file_names_a_layer_above_its_own() {
    let (krate, named) = read_src();
    let layers: Vec<usize> = krate
        .files
        .iter()
        .map(|file| layer_of(&file.module).unwrap_or_else(|| panic!("{}: no layer", file.name)))
        .collect();
    let mut report = String::new();
    for (&(from, to), names) in &named {
        if layers[to] > layers[from] {
            report.push_str(&edge_line(&krate, (from, to), " (a layer above)", names));
        }
    }
    assert!(report.is_empty(), "imports that run up:\n{report}");
}

#[test]
fn a_module_belongs_to_the_layer_of_its_longest_listed_prefix() {
    let module = |path: &str| -> Module { path.split("::").map(str::to_owned).collect() };
    let layer = |name: &str| LAYERS.iter().position(|names| names.contains(&name));
    assert_eq!(
        layer_of(&module("telemetry::layer")),
        layer("telemetry::layer")
    );
    assert_eq!(layer_of(&module("telemetry")), layer("telemetry"));
    assert_eq!(layer_of(&module("store::rows")), layer("store"));
    assert_eq!(layer_of(&module("storey")), layer(""));
    assert!(layer("telemetry::layer") < layer("telemetry"));
}

/// ARCHITECTURE.md's "Every file" table has a row for each file of `src/`, and no other.
#[test]
fn every_file_has_its_line_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect(&root.join("src"), &mut files);
    let mut on_disk: Vec<String> = files
        .iter()
        .map(|path| {
            let name = path.strip_prefix(root).unwrap().to_string_lossy();
            format!("`{}`", name.replace('\\', "/"))
        })
        .collect();
    on_disk.sort();
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut listed: Vec<String> = map
        .lines()
        .filter(|line| line.starts_with("| `src/"))
        .map(|line| line.split('|').nth(1).unwrap().trim().to_owned())
        .collect();
    listed.sort();
    assert!(on_disk.len() >= 50, "found only {} files", on_disk.len());
    assert_eq!(listed, on_disk);
}

#[test]
fn the_detector_finds_a_loop() {
    let edges: BTreeMap<usize, BTreeSet<usize>> = [
        (0, BTreeSet::from([1])),
        (1, BTreeSet::from([2])),
        (2, BTreeSet::from([0, 3])),
        (3, BTreeSet::from([4])),
    ]
    .into_iter()
    .collect();
    assert_eq!(loops(5, &edges), vec![vec![0, 1, 2]]);
    let mut acyclic = edges.clone();
    acyclic.insert(2, BTreeSet::from([3]));
    assert!(loops(5, &acyclic).is_empty());
}

/// The client crate (`clients/rust`) carries none of the server's dependencies: callers link
/// it without a database driver or a Redis client (what `cargo tree -p assent-client` shows).
#[test]
fn the_client_crate_depends_on_neither_sqlx_nor_redis() {
    let metadata = metadata::workspace();
    let nodes: BTreeMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| (node["id"].as_str().unwrap(), node))
        .collect();
    let name_of = |id: &str| -> String {
        metadata["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|package| package["id"] == id)
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let client = nodes
        .keys()
        .find(|id| name_of(id) == "assent-client")
        .expect("the workspace has the client crate");
    // Every package the client links (normal dependencies, transitively; build scripts and
    // tests left out). The graph is the workspace's, its features unified with the server's
    // (tonic's router, for one), so what is checked is the dependencies only the server has.
    let mut linked = BTreeSet::new();
    let mut pending = vec![*client];
    while let Some(id) = pending.pop() {
        for dependency in nodes[id]["deps"].as_array().unwrap() {
            let normal = dependency["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|kind| kind["kind"].is_null());
            let dependency = dependency["pkg"].as_str().unwrap();
            if normal && linked.insert(dependency) {
                pending.push(dependency);
            }
        }
    }
    let names: BTreeSet<String> = linked.iter().map(|id| name_of(id)).collect();
    assert!(names.contains("tonic"), "{names:?}");
    for server_only in ["sqlx", "sqlx-core", "redis"] {
        assert!(
            !names.contains(server_only),
            "the client crate links {server_only}: {names:?}"
        );
    }
}

#[test]
fn the_console_names_of_the_store_cache_and_api_only_the_clock_and_timestamps() {
    let (krate, named) = read_src();
    let below = |name: &str| {
        ["store/", "cache/", "api/"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
    };
    let mut report = String::new();
    let mut seen = 0;
    for (&(from, to), names) in &named {
        if !krate.files[from].name.starts_with("console/") || !below(&krate.files[to].name) {
            continue;
        }
        seen += 1;
        let others: BTreeSet<String> = names
            .iter()
            .filter(|name| {
                !["now_micros", "timestamp"].contains(&name.rsplit("::").next().unwrap_or(name))
            })
            .cloned()
            .collect();
        if !others.is_empty() {
            report.push_str(&edge_line(&krate, (from, to), "", &others));
        }
    }
    assert!(
        seen > 0,
        "the console names neither the clock nor timestamps: the check reads nothing"
    );
    assert!(
        report.is_empty(),
        "the console reaches past the API:\n{report}"
    );
}
