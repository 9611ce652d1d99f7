//! Generates one named conformance test per provider plugin and fixture, from the directories
//! under `conformance/`: a new fixture or plugin directory is a new test, with no list to edit.

use std::fmt::Write as _;
use std::path::Path;

fn identifier(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("conformance");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut plugins: Vec<_> = std::fs::read_dir(root)?.filter_map(Result::ok).map(|e| e.path()).collect();
    plugins.sort();
    let mut out = String::new();
    for dir in plugins.iter().filter(|p| p.is_dir()) {
        println!("cargo:rerun-if-changed={}", dir.display());
        let plugin = dir.file_name().and_then(|n| n.to_str()).ok_or("plugin directory name")?;
        let mut fixtures: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        fixtures.sort();
        writeln!(out, "mod {} {{", identifier(plugin))?;
        for fixture in fixtures {
            let file = fixture.file_name().and_then(|n| n.to_str()).ok_or("fixture file name")?;
            let case = identifier(file.trim_end_matches(".json"));
            writeln!(
                out,
                "    #[tokio::test]\n    async fn {case}() {{\n        super::check_fixture({plugin:?}, {file:?}).await;\n    }}"
            )?;
        }
        writeln!(out, "}}")?;
    }
    let target = Path::new(&std::env::var("OUT_DIR")?).join("conformance_cases.rs");
    std::fs::write(target, out)?;
    Ok(())
}
