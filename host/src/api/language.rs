//! Programming language of the edited file: the name GitLab's gateway reports for it (`lang`,
//! from the file extension alone, with GitLab's table of 100 languages), and the name the prompt
//! is given (aigw's own table by editor id and extension, else GitLab's, else the extension).

use std::borrow::Cow;

/// GitLab's gateway's languages (19.5+): its name for each (its tree-sitter grammar's) and the
/// extensions it maps to it, case included (`C` and `H` are C++, `c` and `h` are C). Facts of
/// GitLab's `code_suggestions/processing/ops.py`, the reason answers report what they report.
const GITLAB: &[(&str, &[&str])] = &[
    ("c", &["c", "h"]),
    ("cpp", &["cpp", "hpp", "c++", "h++", "cc", "hh", "C", "H"]),
    ("csharp", &["cs"]),
    ("go", &["go"]),
    ("java", &["java"]),
    ("javascript", &["js", "jsx"]),
    ("php", &["php", "php3", "php4", "php5", "phps", "phpt"]),
    ("python", &["py"]),
    ("ruby", &["rb"]),
    ("rust", &["rs"]),
    ("scala", &["scala"]),
    ("typescript", &["ts", "tsx"]),
    ("kotlin", &["kts", "kt"]),
    ("ada", &["adb", "ads", "ada"]),
    ("apex", &["cls", "trigger"]),
    ("arduino", &["ino"]),
    ("asm", &["asm", "s", "S"]),
    ("awk", &["awk"]),
    ("bash", &["sh", "bash"]),
    ("batch", &["bat", "cmd"]),
    ("bicep", &["bicep"]),
    ("c3", &["c3"]),
    ("cairo", &["cairo"]),
    ("clojure", &["clj", "cljs", "cljc"]),
    ("cobol", &["cbl", "cob", "cobol"]),
    ("commonlisp", &["lisp", "cl", "lsp"]),
    ("crystal", &["cr"]),
    ("cuda", &["cu", "cuh"]),
    ("d", &["d"]),
    ("dart", &["dart"]),
    ("devicetree", &["dts", "dtsi"]),
    ("dockerfile", &["dockerfile"]),
    ("elisp", &["el"]),
    ("elixir", &["ex", "exs"]),
    ("elm", &["elm"]),
    ("erlang", &["erl", "hrl"]),
    ("fennel", &["fnl"]),
    ("fish", &["fish"]),
    ("fortran", &["f", "f90", "f95", "f03", "f08", "f77", "for"]),
    ("fsharp", &["fs", "fsi", "fsx"]),
    ("gdscript", &["gd"]),
    ("gleam", &["gleam"]),
    ("glsl", &["glsl", "vert", "frag"]),
    ("groovy", &["groovy", "gvy", "gy", "gsh"]),
    ("hack", &["hack"]),
    ("hare", &["ha"]),
    ("haskell", &["hs", "lhs"]),
    ("haxe", &["hx"]),
    ("hcl", &["hcl"]),
    ("hlsl", &["hlsl"]),
    ("idris", &["idr"]),
    ("jai", &["jai"]),
    ("janet", &["janet"]),
    ("jq", &["jq"]),
    ("julia", &["jl"]),
    ("lua", &["lua"]),
    ("luau", &["luau"]),
    ("magik", &["magik"]),
    ("matlab", &["mat"]),
    ("mojo", &["mojo"]),
    ("move", &["move"]),
    ("nim", &["nim"]),
    ("nix", &["nix"]),
    ("objc", &["m", "mm"]),
    ("ocaml", &["ml", "mli"]),
    ("odin", &["odin"]),
    ("pascal", &["pas", "pp"]),
    ("perl", &["pl", "pm", "pod", "t"]),
    ("pony", &["pony"]),
    ("powershell", &["ps1", "psm1", "psd1"]),
    ("prolog", &["pro", "prolog"]),
    ("purescript", &["purs"]),
    ("ql", &["ql", "qll"]),
    ("r", &["r", "R"]),
    ("racket", &["rkt"]),
    ("rescript", &["res", "resi"]),
    ("robot", &["robot"]),
    ("roc", &["roc"]),
    ("scheme", &["scm", "ss"]),
    ("smalltalk", &["st"]),
    ("solidity", &["sol"]),
    ("sourcepawn", &["sp"]),
    ("sql", &["sql"]),
    ("starlark", &["star", "bzl"]),
    ("svelte", &["svelte"]),
    ("swift", &["swift"]),
    ("systemverilog", &["sv", "svh"]),
    ("tact", &["tact"]),
    ("tcl", &["tcl", "tk"]),
    ("terraform", &["tf", "tfvars"]),
    ("tlaplus", &["tla"]),
    ("v", &["vsh", "vv"]),
    ("vb", &["vb", "bas", "vbs"]),
    ("verilog", &["v"]),
    ("vhdl", &["vhd", "vhdl"]),
    ("vim", &["vim"]),
    ("vue", &["vue"]),
    ("wgsl", &["wgsl"]),
    ("zig", &["zig"]),
    ("zsh", &["zsh"]),
];

/// The two languages whose reported `lang` is not their grammar's name (GitLab reports its
/// language enum's member names, which abbreviate these two).
const REPORTED_ABBREVIATIONS: [(&str, &str); 2] = [("javascript", "js"), ("typescript", "ts")];

type Language = (&'static str, &'static [&'static str], &'static [&'static str]);

/// aigw's names for the prompts (name, editor language ids, extensions, all lower case): the
/// editor ids VS Code and JetBrains send, and extensions GitLab's table lacks (`.mjs`, `.pyw`).
const LANGUAGES: &[Language] = &[
    ("c", &["c"], &["c", "h"]),
    ("cpp", &["cpp", "c++"], &["cpp", "hpp", "cc", "cxx", "hh", "hxx", "c++", "h++"]),
    ("csharp", &["csharp", "c#"], &["cs"]),
    ("go", &["go", "golang"], &["go"]),
    ("java", &["java"], &["java"]),
    ("javascript", &["javascript", "javascriptreact", "js", "jsx"], &["js", "jsx", "mjs", "cjs"]),
    ("typescript", &["typescript", "typescriptreact", "ts", "tsx"], &["ts", "tsx", "mts", "cts"]),
    ("kotlin", &["kotlin"], &["kt", "kts"]),
    ("php", &["php"], &["php", "phtml"]),
    ("python", &["python", "py"], &["py", "pyw", "pyi"]),
    ("ruby", &["ruby", "rb"], &["rb", "rake", "gemspec"]),
    ("rust", &["rust", "rs"], &["rs"]),
    ("scala", &["scala"], &["scala", "sc"]),
    ("swift", &["swift"], &["swift"]),
    ("shell", &["shellscript", "shell", "bash", "sh"], &["sh", "bash", "zsh"]),
    ("sql", &["sql"], &["sql"]),
    ("terraform", &["terraform", "hcl"], &["tf", "hcl"]),
    ("html", &["html"], &["html", "htm"]),
    ("css", &["css", "scss", "less"], &["css", "scss", "less"]),
    ("vue", &["vue"], &["vue"]),
    ("svelte", &["svelte"], &["svelte"]),
    ("haskell", &["haskell"], &["hs"]),
    ("lua", &["lua"], &["lua"]),
    ("perl", &["perl"], &["pl", "pm"]),
    ("r", &["r"], &["r"]),
    ("objective-c", &["objective-c", "objc"], &["m", "mm"]),
    ("elixir", &["elixir"], &["ex", "exs"]),
    ("erlang", &["erlang"], &["erl"]),
    ("dart", &["dart"], &["dart"]),
    ("groovy", &["groovy"], &["groovy", "gradle"]),
    ("powershell", &["powershell"], &["ps1", "psm1"]),
    ("yaml", &["yaml"], &["yaml", "yml"]),
    ("json", &["json", "jsonc"], &["json"]),
    ("markdown", &["markdown"], &["md", "markdown"]),
];

/// The name a prompt is given for the language: aigw's by the editor's id, else aigw's by the
/// extension, else GitLab's by the extension, else the editor's id or the extension itself
/// (`conf`), lower-cased. `None` for a file without extension whose editor language aigw does
/// not know (a `Procfile`, `NOTES` in plain text), which GitLab's gateway does not complete.
pub(crate) fn resolve(language_identifier: Option<&str>, file_name: &str) -> Option<Cow<'static, str>> {
    let identifier = language_identifier.map(str::trim).filter(|id| !id.is_empty());
    let extension = extension(file_name);
    if let Some((name, _, _)) = by_editor_id(identifier).or_else(|| by_extension(extension)) {
        return Some(Cow::Borrowed(name));
    }
    if let Some(name) = gitlab_name(extension) {
        return Some(Cow::Borrowed(name));
    }
    let extension = extension?;
    Some(Cow::Owned(identifier.unwrap_or(extension).to_lowercase()))
}

/// The language as answers report it (`lang`): GitLab's name for the file's extension (`ts`,
/// `js`, `bash`, `fsharp`, …), `""` for an extension GitLab's gateway has no language for. The
/// editor's language plays no part, as in GitLab's gateway (`Cargo.toml` is `""` even when the
/// editor says Rust).
pub(crate) fn reported(file_name: &str) -> &'static str {
    let Some(name) = gitlab_name(extension(file_name)) else { return "" };
    REPORTED_ABBREVIATIONS.iter().find(|(grammar, _)| *grammar == name).map_or(name, |(_, short)| short)
}

/// The text after the last `.` of the file name (not of a directory), if any.
fn extension(file_name: &str) -> Option<&str> {
    std::path::Path::new(file_name).extension().and_then(|e| e.to_str()).filter(|e| !e.is_empty())
}

/// GitLab's grammar name for `extension`, matched as GitLab matches it (case-sensitive).
fn gitlab_name(extension: Option<&str>) -> Option<&'static str> {
    let extension = extension?;
    GITLAB.iter().find(|(_, extensions)| extensions.contains(&extension)).map(|(name, _)| *name)
}

fn by_editor_id(identifier: Option<&str>) -> Option<&'static Language> {
    let id = identifier?.to_ascii_lowercase();
    LANGUAGES.iter().find(|(_, ids, _)| ids.contains(&id.as_str()))
}

fn by_extension(extension: Option<&str>) -> Option<&'static Language> {
    let extension = extension?.to_ascii_lowercase();
    LANGUAGES.iter().find(|(_, _, extensions)| extensions.contains(&extension.as_str()))
}

#[cfg(test)]
mod tests {
    use super::{GITLAB, reported, resolve};

    fn resolved(identifier: Option<&str>, file_name: &str) -> Option<String> {
        resolve(identifier, file_name).map(|name| name.into_owned())
    }

    #[test]
    fn editor_id_wins_over_extension() {
        assert_eq!(resolved(Some("typescriptreact"), "a.py").as_deref(), Some("typescript"));
        assert_eq!(resolved(Some("Python"), "noext").as_deref(), Some("python"));
    }

    #[test]
    fn extension_is_the_fallback() {
        assert_eq!(resolved(None, "src/main.rs").as_deref(), Some("rust"));
        assert_eq!(resolved(Some("unknown-id"), "lib/app.RB").as_deref(), Some("ruby"));
        assert_eq!(resolved(Some(""), "x.tf").as_deref(), Some("terraform"));
    }

    #[test]
    fn languages_only_gitlab_knows_and_unknown_ones_are_still_named() {
        assert_eq!(resolved(Some("Zig"), "src/ring.zig").as_deref(), Some("zig"));
        assert_eq!(resolved(Some("F#"), "Temperature.fs").as_deref(), Some("fsharp"));
        assert_eq!(resolved(None, "bst.ml").as_deref(), Some("ocaml"));
        assert_eq!(resolved(Some(""), "deploy/nginx/site.conf").as_deref(), Some("conf"));
        assert_eq!(resolved(Some("plaintext"), "notes.txt").as_deref(), Some("plaintext"));
    }

    #[test]
    fn a_file_without_extension_or_editor_language_is_unknown() {
        assert_eq!(resolved(None, "README"), None);
        assert_eq!(resolved(Some(""), "Procfile"), None);
        assert_eq!(resolved(Some("  "), "dir.d/Procfile"), None);
        assert_eq!(resolved(Some("plaintext"), "NOTES"), None);
        assert_eq!(resolved(Some("ruby"), "Gemfile").as_deref(), Some("ruby"), "an editor language aigw knows");
    }

    #[test]
    fn answers_report_gitlabs_names_from_the_extension_alone() {
        assert_eq!(reported("App.tsx"), "ts");
        assert_eq!(reported("index.js"), "js");
        assert_eq!(reported("run.sh"), "bash");
        assert_eq!(reported("main.py"), "python");
        assert_eq!(reported("src/Temperature.fs"), "fsharp");
        assert_eq!(reported("Sources/APIClient.m"), "objc");
        assert_eq!(reported("Cargo.toml"), "", "the editor's Rust does not count");
        assert_eq!(reported(".gitlab-ci.yml"), "", "a language GitLab has no name for");
        assert_eq!(reported("index.mjs"), "", "an extension only aigw knows");
        assert_eq!(reported("README"), "");
        assert_eq!((reported("a.C"), reported("a.c")), ("cpp", "c"), "case matters, as in GitLab's table");
    }

    #[test]
    fn gitlabs_table_maps_each_extension_once() {
        let mut seen = std::collections::HashSet::new();
        for (name, extensions) in GITLAB {
            for extension in *extensions {
                assert!(seen.insert(*extension), "{extension} mapped twice ({name})");
            }
        }
        assert_eq!(GITLAB.len(), 100);
    }
}
