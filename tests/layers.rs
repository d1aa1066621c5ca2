//! The layers of src/ (src/lib.rs describes them): each top-level module
//! uses only modules of a lower layer, so there is no cycle and a change to
//! the pure core never needs the server to understand it. Read from the
//! source: every `crate::module` a module's code names (comments and
//! `#[cfg(test)]` modules aside: tests may build with anything).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and its layer: a module may use only modules of a
/// lower layer.
const LAYERS: &[(&str, u8)] = &[
    // Beside everything: no dependency on the rest of archway.
    ("components", 0),
    ("metrics", 0),
    ("telemetry", 0),
    ("report", 0),
    ("certs", 0),
    // The pure core.
    ("decision", 1),
    // What images publish.
    ("lookup", 2),
    // The configuration file: schema and validation of the layers below.
    ("config", 3),
    // Reading and writing the cluster.
    ("cluster", 3),
    // One review.
    ("admission", 4),
    // A reviewer built from the configuration.
    ("setup", 5),
    // What runs beside the webhook.
    ("controllers", 6),
    // The runtime and the servers.
    ("serve", 7),
    // The commands, and the flags that pick one.
    ("commands", 8),
    ("cli", 9),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// The source without comments, without string contents that could name a
/// module, and without its `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`.
fn used(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b::Y}`.
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = (item.trim().chars())
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
            }
        } else {
            let name: String = (rest.chars())
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn visit(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    visit(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unknown = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative.iter().next().unwrap().to_string_lossy();
        let module = top.trim_end_matches(".rs").to_string();
        let name = file.file_name().unwrap().to_string_lossy();
        // Test files of their own, and the binary's entry point.
        if module == "lib" || module == "main" || name == "tests.rs" || name.ends_with("_tests.rs")
        {
            continue;
        }
        if layer(&module).is_none() {
            unknown.insert(module.clone());
        }
        let text = std::fs::read_to_string(file).unwrap();
        for target in used(&code(&text)) {
            if target != module {
                uses.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer in tests/layers.rs: {unknown:?}"
    );
    let mut wrong = Vec::new();
    for (module, targets) in &uses {
        let own = layer(module).unwrap();
        for target in targets {
            match layer(target) {
                Some(theirs) if theirs < own => {}
                Some(theirs) => wrong.push(format!(
                    "{module} (layer {own}) uses {target} (layer {theirs})"
                )),
                None => wrong.push(format!("{module} uses crate::{target}, not a module")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses against the layers:\n{}",
        wrong.join("\n")
    );
    // The order, for the record.
    for (module, targets) in &uses {
        eprintln!(
            "LAYERS {module} -> {}",
            Vec::from_iter(targets.iter().cloned()).join(", ")
        );
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_uses_and_skips_comments_and_tests() {
    let text = "use crate::{decision::X, lookup::Y};\n// crate::serve in a comment\nfn f() { crate::metrics::m(); }\n#[cfg(test)]\nmod tests { use crate::serve; }\n";
    let found = used(&code(text));
    assert_eq!(
        found,
        BTreeSet::from(["decision".into(), "lookup".into(), "metrics".into()])
    );
}
