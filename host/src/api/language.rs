//! Programming language of the edited file: from the editor's language id, else the extension.

/// (name reported to GitLab, editor language ids, file extensions).
const LANGUAGES: &[(&str, &[&str], &[&str])] = &[
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

/// Resolve the language from `language_identifier` (case-insensitive), else the file extension.
pub(crate) fn resolve(language_identifier: Option<&str>, file_name: &str) -> Option<&'static str> {
    if let Some(id) = language_identifier.map(str::trim).filter(|id| !id.is_empty()) {
        let id = id.to_ascii_lowercase();
        if let Some((name, _, _)) = LANGUAGES.iter().find(|(_, ids, _)| ids.contains(&id.as_str())) {
            return Some(name);
        }
    }
    let extension = std::path::Path::new(file_name).extension()?.to_str()?.to_ascii_lowercase();
    LANGUAGES.iter().find(|(_, _, extensions)| extensions.contains(&extension.as_str())).map(|(name, _, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn editor_id_wins_over_extension() {
        assert_eq!(resolve(Some("typescriptreact"), "a.py"), Some("typescript"));
        assert_eq!(resolve(Some("Python"), "noext"), Some("python"));
    }

    #[test]
    fn extension_is_the_fallback() {
        assert_eq!(resolve(None, "src/main.rs"), Some("rust"));
        assert_eq!(resolve(Some("unknown-id"), "lib/app.RB"), Some("ruby"));
        assert_eq!(resolve(Some(""), "x.tf"), Some("terraform"));
    }

    #[test]
    fn unknown_is_none() {
        assert_eq!(resolve(None, "README"), None);
        assert_eq!(resolve(Some("plaintext"), "notes.txt"), None);
    }
}
