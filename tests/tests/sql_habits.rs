//! The SQLite habits hold in the source (see `tests/src/sql_habits.rs`): no hot diesel query
//! binds its `LIMIT`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use integration_tests::sql_habits::{DIESEL_CRATES, check_source};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// No source file of a crate that queries SQLite binds a `LIMIT` (`.first(conn)`,
/// `.limit(n)`) outside a line marked cold.
#[test]
fn no_hot_query_binds_its_limit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut violations = Vec::new();
    let mut files = 0;
    for krate in DIESEL_CRATES {
        let mut found = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut found);
        for path in found {
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let label = path.strip_prefix(root).unwrap().display().to_string();
            violations.extend(check_source(&label, &text));
        }
    }
    assert!(files > 10, "the check found only {files} files");
    assert!(violations.is_empty(), "bound LIMITs:\n{}", violations.join("\n"));
}

/// The check is not vacuous: `.first(conn)`, `.first::<T>(conn)` and `.limit(n)` are caught,
/// a slice's `.first()`, a comment and a line marked cold are not.
#[test]
fn the_check_catches_bound_limits() {
    let bad = "let a = t.find(id).first(conn)?;\nlet b = q.first::<i64>(conn)?;\nlet c = q.limit(5).load(conn)?;\n";
    assert_eq!(check_source("bad.rs", bad).len(), 3);
    let fine = "let a = v.first();\n// .first(conn) in a comment\n// cold: a list a person asks for\nlet c = q.limit(n).load(conn)?;\nlet d = q.limit(1).load(conn)?; // cold: at open\n";
    assert!(check_source("fine.rs", fine).is_empty(), "{:?}", check_source("fine.rs", fine));
}
