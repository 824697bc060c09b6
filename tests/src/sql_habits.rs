//! The SQLite habits of docs/ARCHITECTURE.md as a check over the source: no bound `LIMIT` on
//! diesel queries (`.first(conn)`, `.limit(n)`), because the bundled SQLite re-prepares such a
//! statement every time the limit is bound again. A line may opt out with a comment naming
//! why the query is cold (`// cold:` on it or one of the two lines above), e.g. a list a person asks for.

/// The crates whose sources are checked: the ones that query SQLite through diesel.
pub const DIESEL_CRATES: &[&str] =
    &["crates/sync-log", "crates/library-models", "crates/txn-manager", "examples/album"];

/// The violations in one file's text (`path` only labels them): one line each.
pub fn check_source(path: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let bound_limit =
            code.contains(".limit(") || code.contains(".first::<") || first_with_argument(code);
        let excused = lines[i.saturating_sub(2)..=i].iter().any(|l| l.contains("// cold:"));
        if bound_limit && !excused {
            out.push(format!("{path}:{}: bound LIMIT: {}", i + 1, line.trim()));
        }
    }
    out
}

/// `.first(x)` with an argument: diesel's `first(conn)` (a slice's `.first()` takes none).
fn first_with_argument(code: &str) -> bool {
    code.match_indices(".first(")
        .any(|(at, m)| code[at + m.len()..].chars().next().is_some_and(|c| c != ')'))
}
