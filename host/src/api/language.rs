//! Programming language of the edited file: from the editor's language id, else the extension;
//! and the short name GitLab's gateway reports for it.

type Language = (&'static str, Option<&'static str>, &'static [&'static str], &'static [&'static str]);

/// (name the prompts use, name GitLab's gateway reports as `lang` if it knows the language,
/// editor language ids, file extensions).
const LANGUAGES: &[Language] = &[
    ("c", Some("c"), &["c"], &["c", "h"]),
    ("cpp", Some("cpp"), &["cpp", "c++"], &["cpp", "hpp", "cc", "cxx", "hh", "hxx", "c++", "h++"]),
    ("csharp", Some("csharp"), &["csharp", "c#"], &["cs"]),
    ("go", Some("go"), &["go", "golang"], &["go"]),
    ("java", Some("java"), &["java"], &["java"]),
    ("javascript", Some("js"), &["javascript", "javascriptreact", "js", "jsx"], &["js", "jsx", "mjs", "cjs"]),
    ("typescript", Some("ts"), &["typescript", "typescriptreact", "ts", "tsx"], &["ts", "tsx", "mts", "cts"]),
    ("kotlin", Some("kotlin"), &["kotlin"], &["kt", "kts"]),
    ("php", Some("php"), &["php"], &["php", "phtml"]),
    ("python", Some("python"), &["python", "py"], &["py", "pyw", "pyi"]),
    ("ruby", Some("ruby"), &["ruby", "rb"], &["rb", "rake", "gemspec"]),
    ("rust", Some("rust"), &["rust", "rs"], &["rs"]),
    ("scala", Some("scala"), &["scala"], &["scala", "sc"]),
    ("swift", Some("swift"), &["swift"], &["swift"]),
    ("shell", Some("bash"), &["shellscript", "shell", "bash", "sh"], &["sh", "bash", "zsh"]),
    ("sql", Some("sql"), &["sql"], &["sql"]),
    ("terraform", Some("terraform"), &["terraform", "hcl"], &["tf", "hcl"]),
    ("html", None, &["html"], &["html", "htm"]),
    ("css", None, &["css", "scss", "less"], &["css", "scss", "less"]),
    ("vue", Some("vue"), &["vue"], &["vue"]),
    ("svelte", Some("svelte"), &["svelte"], &["svelte"]),
    ("haskell", Some("haskell"), &["haskell"], &["hs"]),
    ("lua", Some("lua"), &["lua"], &["lua"]),
    ("perl", Some("perl"), &["perl"], &["pl", "pm"]),
    ("r", Some("r"), &["r"], &["r"]),
    ("objective-c", Some("objc"), &["objective-c", "objc"], &["m", "mm"]),
    ("elixir", Some("elixir"), &["elixir"], &["ex", "exs"]),
    ("erlang", Some("erlang"), &["erlang"], &["erl"]),
    ("dart", Some("dart"), &["dart"], &["dart"]),
    ("groovy", Some("groovy"), &["groovy"], &["groovy", "gradle"]),
    ("powershell", Some("powershell"), &["powershell"], &["ps1", "psm1"]),
    ("yaml", None, &["yaml"], &["yaml", "yml"]),
    ("json", None, &["json", "jsonc"], &["json"]),
    ("markdown", None, &["markdown"], &["md", "markdown"]),
];

/// Resolve the language from `language_identifier` (case-insensitive), else the file extension.
pub(crate) fn resolve(language_identifier: Option<&str>, file_name: &str) -> Option<&'static str> {
    by_editor_id(language_identifier).or_else(|| by_extension(file_name)).map(|(name, _, _, _)| *name)
}

/// The language as answers report it (`lang`): GitLab's name for it (`ts`, `js`, `bash`, …),
/// found from the file extension first and the editor's id second, as GitLab's gateway finds
/// it; `""` for a language GitLab's gateway has no name for.
pub(crate) fn reported(language_identifier: Option<&str>, file_name: &str) -> &'static str {
    by_extension(file_name)
        .or_else(|| by_editor_id(language_identifier))
        .and_then(|(_, gitlab, _, _)| *gitlab)
        .unwrap_or("")
}

fn by_editor_id(language_identifier: Option<&str>) -> Option<&'static Language> {
    let id = language_identifier.map(str::trim).filter(|id| !id.is_empty())?.to_ascii_lowercase();
    LANGUAGES.iter().find(|(_, _, ids, _)| ids.contains(&id.as_str()))
}

fn by_extension(file_name: &str) -> Option<&'static Language> {
    let extension = std::path::Path::new(file_name).extension()?.to_str()?.to_ascii_lowercase();
    LANGUAGES.iter().find(|(_, _, _, extensions)| extensions.contains(&extension.as_str()))
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
    fn answers_report_gitlabs_short_names() {
        use super::reported;
        assert_eq!(reported(Some("typescriptreact"), "App.tsx"), "ts");
        assert_eq!(reported(None, "index.mjs"), "js");
        assert_eq!(reported(Some("shellscript"), "run"), "bash");
        assert_eq!(reported(Some("python"), "main.py"), "python");
        assert_eq!(reported(Some("yaml"), ".gitlab-ci.yml"), "", "a language GitLab has no name for");
        assert_eq!(reported(None, "README"), "");
    }

    #[test]
    fn unknown_is_none() {
        assert_eq!(resolve(None, "README"), None);
        assert_eq!(resolve(Some("plaintext"), "notes.txt"), None);
    }
}
